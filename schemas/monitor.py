"""What audit-log verifiers share: the state a monitor remembers between runs (the file
format both the broker's local monitor and the auditor's remote one read and write), the
checks that make a tree head witnessed (the only heads a monitor adopts, ADR 24), and the
findings of a verification.

Pure: parsing and encoding only; the callers read and write the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.canonical import b64e
from schemas.checkpoint import (
    NOTE_ALG,
    Checkpoint,
    CosignerKey,
    QuorumMissing,
    SignedNote,
    WitnessTrust,
)
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import VerifyKey
from schemas.treehead import (
    SignedTreeHead,
    TreeHead,
    TreeHeadConflict,
    parse_signed_tree_head,
    verify_tree_head,
)

__all__ = [
    "Findings",
    "MonitorState",
    "Problem",
    "cosigned_checkpoint",
    "witnessed_head",
    "witnessed_line",
]


@dataclass
class MonitorState:
    """The pinned log key and origin, the last verified head, and after an alarm the
    alarm and the heads kept as evidence (a monitor that alarmed trusts nothing more)."""

    path: Path
    log_key: str
    origin: str
    head: SignedTreeHead | None = None
    alarm: dict[str, Any] | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path, raw: bytes) -> MonitorState:
        """The state stored in ``raw`` (read from ``path``).

        Raises:
            ConfigError: not a state file a monitor wrote.
        """
        try:
            doc = json.loads(raw)
            head = doc.get("head")
            return cls(
                path=path,
                log_key=str(doc["log_key"]),
                origin=str(doc["origin"]),
                head=None if head is None else parse_signed_tree_head(json.dumps(head).encode()),
                alarm=doc.get("alarm"),
                evidence=list(doc.get("evidence", [])),
            )
        except (ValueError, KeyError, TypeError, AttributeError, EnvelopeError) as exc:
            raise ConfigError(f"the monitor state {path} is not one this monitor wrote") from exc

    def encode(self) -> bytes:
        doc = {
            "v": 1,
            "log_key": self.log_key,
            "origin": self.origin,
            "head": None if self.head is None else self.head.model_dump(mode="json"),
            "alarm": self.alarm,
            "evidence": self.evidence,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def raise_alarm(
        self, kind: str, message: str, at: str, heads: tuple[SignedTreeHead, ...]
    ) -> None:
        """Record an alarm and keep ``heads`` as evidence."""
        self.alarm = {"kind": kind, "message": message, "at": at}
        self.evidence += [h.model_dump(mode="json") for h in heads]


def cosigned_checkpoint(
    trust: WitnessTrust, note: SignedNote | None, key: VerifyKey, origin: str, where: str
) -> tuple[Checkpoint, list[str]]:
    """The log's checkpoint, signed by its key and cosigned by the quorum of ``trust``.

    Args:
        note: the checkpoint the log keeps (None: it keeps none).
        where: where it was looked for, for the message.

    Returns:
        The checkpoint and the names of the witnesses whose cosignatures verify.

    Raises:
        QuorumMissing: no checkpoint, one not signed by ``key`` for ``origin``, or too few
            valid cosignatures (each missing witness named).
    """
    if note is None:
        raise QuorumMissing(f"audit log not witnessed: no checkpoint at {where}")
    try:
        return trust.verify(note, CosignerKey(origin, key, NOTE_ALG))
    except (EnvelopeError, SignatureError) as exc:
        raise QuorumMissing(f"audit log not witnessed: {exc}") from exc


def witnessed_head(
    cp: Checkpoint, head: SignedTreeHead | None, key: VerifyKey, origin: str, latest_size: int
) -> SignedTreeHead:
    """The log's own signed head at the size the witnesses cosigned, when it is theirs.

    Args:
        cp: the cosigned checkpoint (``cosigned_checkpoint``).
        head: the log's signed tree head at ``cp.size`` (None: it has none there).
        latest_size: the size of the log's latest verified head (0: it has none).

    Raises:
        TreeHeadConflict: code ``rollback``: the log no longer reaches the cosigned size
            (truncated); code ``fork``: its head there has another root (rewritten).
        SignatureError: its head there is not signed by ``key`` for ``origin``.
    """
    if head is None:
        if cp.size > latest_size:
            raise TreeHeadConflict(
                f"the witnesses cosigned size {cp.size}, root {b64e(cp.root)}, but the log's "
                f"latest head is at size {latest_size}: it was truncated",
                code="rollback",
            )
        raise TreeHeadConflict(
            f"the witnesses cosigned size {cp.size}, root {b64e(cp.root)}, but the log has "
            "no signed head at that size: its history was rewritten",
            code="fork",
        )
    verified = verify_tree_head(head, key, origin)
    if verified.tree_size != cp.size or verified.root() != cp.root:
        raise TreeHeadConflict(
            f"the witnesses cosigned root {b64e(cp.root)} at size {cp.size}; the log's head "
            f"there has root {verified.root_hash}: its history was rewritten",
            code="fork",
        )
    return head


def witnessed_line(
    trust: WitnessTrust,
    cp: Checkpoint,
    good: list[str],
    latest: TreeHead,
    kept: TreeHead,
    *,
    adopted: bool,
) -> str:
    """What a monitor says of the witnessed head: ``adopted`` as its new state, or the
    state ``kept`` (a head it adopted before, as large or larger)."""
    said = (
        f"witnessed: size {cp.size} cosigned by {len(good)} of {len(trust.witnesses)} "
        f"witnesses (quorum {trust.quorum}: {', '.join(good)})"
    )
    if latest.tree_size > cp.size:
        said += (
            f"; the latest head, size {latest.tree_size}, is not witnessed yet: seen, not adopted"
        )
    if adopted:
        return said + f"; the monitor's state is now size {cp.size}"
    return said + f"; the monitor's state stays at size {kept.tree_size}"


@dataclass(frozen=True)
class Problem:
    """Something wrong with log entries ``index .. end - 1`` (one entry, or the range a
    signed head or a node covers), and what."""

    index: int
    message: str
    end: int


@dataclass
class Findings:
    """What a verification of the audit log checked, and its first problem, if any.

    The first problem is the one whose range ends first, then the narrowest of those (the
    highest index): a bad entry wins over the head or node range that holds it, even the
    range that ends with it (a Merkle node over entries 0..1 when entry 1 was edited), and
    an earlier range over a later entry. The local and the remote verifiers extend this
    with what each checks.
    """

    entries: int = 0
    heads: int = 0
    latest: TreeHead | None = None
    first: Problem | None = None
    problems: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.first is None

    def add(self, index: int, message: str, end: int | None = None) -> None:
        """Note a problem with entry ``index`` (or the range up to ``end``)."""
        self.problems += 1
        p = Problem(index, message, index + 1 if end is None else end)
        if self.first is None or (p.end, -p.index) < (self.first.end, -self.first.index):
            self.first = p
