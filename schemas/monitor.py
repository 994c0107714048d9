"""What audit-log verifiers share: the state a monitor remembers between runs (the file
format both the broker's local monitor and the auditor's remote one read and write), and
the findings of a verification.

Pure: parsing and encoding only; the callers read and write the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, EnvelopeError
from schemas.treehead import SignedTreeHead, TreeHead, parse_signed_tree_head

__all__ = ["Findings", "MonitorState", "Problem"]


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
