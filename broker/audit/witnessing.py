"""Witnesses of the audit log, as the log and its verifiers see them.

* ``WitnessTrust``: which witnesses count (name, verifier key, and for the log their URL)
  and how many must cosign (``quorum``, k of n). Read from a trust file::

      {"quorum": 2, "witnesses": [
        {"name": "witness.gt-justice", "key": "witness.gt-justice+1a2b3c4d+BK…", "url": "http://127.0.0.1:7301"},
        …]}

  or from ``--witness NAME=KEY`` options and ``--quorum``.
* ``CheckpointPublisher``: after each signed tree head, the sequencer signs it as a C2SP
  checkpoint and sends it to every witness (``POST <url>/add-checkpoint``, with the
  consistency proof from the size that witness last cosigned); only a checkpoint with a
  quorum of valid cosignatures is written to ``DATA_DIR/broker/checkpoint`` (atomically),
  which ``istmo audit verify`` and ``GET /v1/audit/checkpoint`` read. A witness that is
  down, or refuses, costs one cosignature, not the log's progress: sequencing never waits
  for witnesses beyond their timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from broker.files import write_file
from schemas.checkpoint import (
    AddCheckpoint,
    Checkpoint,
    CosignerKey,
    SignedNote,
    WitnessEndpoint,
    WitnessTrust,
    format_add_checkpoint,
    parse_note,
    parse_signature_lines,
    sign_checkpoint,
    trust_from_options,
    verify_cosignature,
)
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import SigningKey
from schemas.treehead import TreeHead

__all__ = [
    "CHECKPOINT_FILE",
    "CheckpointPublisher",
    "load_trust",
    "read_checkpoint",
    "witness_sizes",
]

log = logging.getLogger("istmo.witnessing")

CHECKPOINT_FILE = "checkpoint"


def load_trust(path: Path) -> WitnessTrust:
    """Read a witnesses trust file (``schemas.checkpoint.trust_from_options``).

    Raises:
        ConfigError: unreadable, malformed, a bad key, or a quorum outside 1..n.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the witnesses file {path}") from exc
    trust = trust_from_options([], None, (raw, str(path)))
    if trust is None:  # pragma: no cover - a file always names its witnesses or raises
        raise ConfigError(f"the witnesses file {path} names no witness")
    return trust


def read_checkpoint(broker_dir: Path) -> SignedNote | None:
    """The latest checkpoint with a quorum, as the sequencer stored it (None before any).

    Raises:
        EnvelopeError: the file is not a signed note.
    """
    path = broker_dir / CHECKPOINT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_note(raw)


class CheckpointPublisher:
    """Gathers witnesses' cosignatures for each tree head; stores a checkpoint with quorum."""

    def __init__(
        self,
        trust: WitnessTrust,
        key: SigningKey,
        origin: str,
        broker_dir: Path,
        proof: Callable[[int, int], list[bytes]],
        *,
        timeout_s: float = 3.0,
        out: Callable[[str], None] = print,
    ) -> None:
        self.trust = trust
        self.key = key
        self.log_key = CosignerKey(origin, key.verify_key, 0x01)
        self.origin = origin
        self.broker_dir = broker_dir
        self._proof = proof
        self._proof_lock = threading.Lock()  # the log's reader is shared by the askers
        self._timeout_s = timeout_s
        self._out = out
        self._cosigned: dict[str, int] = {}  # what each witness said it last cosigned
        self._http = httpx.Client(timeout=timeout_s)
        self.published: Checkpoint | None = None
        self.last_problem = ""

    def close(self) -> None:
        self._http.close()

    def _post(self, w: WitnessEndpoint, note: SignedNote, old: int) -> httpx.Response:
        size = note.checkpoint().size
        with self._proof_lock:
            proof = self._proof(old, size) if 0 < old < size else []
        body = format_add_checkpoint(AddCheckpoint(old, tuple(proof), note))
        url = f"{(w.url or '').rstrip('/')}/add-checkpoint"
        return self._http.post(url, content=body)

    def _ask(self, w: WitnessEndpoint, note: SignedNote) -> SignedNote | str:
        """The note with ``w``'s cosignature, or why there is none."""
        name = w.key.name
        size = note.checkpoint().size
        old = self._cosigned.get(name, 0)
        try:
            for _ in range(2):
                if old > size:
                    return f"{name} cosigned size {old}, beyond this log's {size}"
                r = self._post(w, note, old)
                if r.status_code == 409 and r.headers.get("content-type", "").startswith(
                    "text/x.tlog.size"
                ):
                    text = r.text.strip()
                    if not text.isdigit() or len(text) > 19:
                        return f"{name}: a malformed 409"
                    old = self._cosigned[name] = int(text)
                    continue  # once more, from the size it has
                break
        except httpx.HTTPError as exc:
            return f"{name} unreachable ({type(exc).__name__})"
        if r.status_code != 200:
            return f"{name} refused ({r.status_code}: {r.text.strip()[:120]})"
        try:
            sigs = parse_signature_lines(r.text)
            cosigned = note.with_signatures(s for s in sigs if s.name == name)
            if verify_cosignature(cosigned, w.key) is None:
                return f"{name} answered no cosignature by its key"
        except (EnvelopeError, SignatureError) as exc:
            return f"{name} answered a bad cosignature ({exc})"
        self._cosigned[name] = size
        return cosigned

    def publish(self, head: TreeHead) -> SignedNote | None:
        """Ask every witness to cosign ``head``; store and return the checkpoint if a quorum
        did, else None (and ``last_problem`` says why)."""
        note = sign_checkpoint(Checkpoint(self.origin, head.tree_size, head.root()), self.key)
        ends = [w for w in self.trust.witnesses if w.url]
        with ThreadPoolExecutor(max_workers=max(1, len(ends))) as pool:
            answers = list(pool.map(lambda w: self._ask(w, note), ends))
        full, problems = note, []
        for a in answers:
            if isinstance(a, str):
                problems.append(a)
            else:
                full = full.with_signatures(a.signatures)
        try:
            cp, good = self.trust.verify(full, self.log_key)
        except SignatureError as exc:
            self.last_problem = f"{exc}; {'; '.join(problems)}"
            log.warning("checkpoint not published: %s", self.last_problem)
            self._out(
                f"sequencer: checkpoint at size {head.tree_size} NOT published: "
                f"{'; '.join(problems)}"
            )
            return None
        write_file(self.broker_dir / CHECKPOINT_FILE, full.encode(), 0o644)
        self.published = cp
        self.last_problem = "; ".join(problems)
        if problems:
            log.warning("checkpoint at size %d published without: %s", cp.size, self.last_problem)
        log.info("checkpoint at size %d cosigned by %s", cp.size, ", ".join(good))
        return full


def witness_sizes(
    trust: WitnessTrust, note: SignedNote, *, timeout_s: float = 3.0
) -> dict[str, int | str]:
    """Ask each witness with a URL which size of this log it last cosigned.

    The witness protocol has no read call yet, so this sends ``note`` (a checkpoint the log
    signed) as an add-checkpoint from old size 0: a witness that cosigned anything answers
    409 with its size and changes nothing. (One that never cosigned this log cosigns it,
    which is what it is for.)

    Returns:
        Per witness name, its size, or why it did not say.
    """
    out: dict[str, int | str] = {}
    body = format_add_checkpoint(AddCheckpoint(0, (), note))
    with httpx.Client(timeout=timeout_s) as http:
        for w in trust.witnesses:
            if not w.url:
                continue
            try:
                r = http.post(f"{w.url.rstrip('/')}/add-checkpoint", content=body)
            except httpx.HTTPError as exc:
                out[w.key.name] = f"unreachable ({type(exc).__name__})"
                continue
            text = r.text.strip()
            if r.status_code == 409 and text.isdigit() and len(text) <= 19:
                out[w.key.name] = int(text)
            elif r.status_code == 200:
                out[w.key.name] = note.checkpoint().size
            else:
                out[w.key.name] = f"answered {r.status_code}"
    return out
