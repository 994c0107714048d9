"""A witness of the audit log (c2sp.org/tlog-witness): `istmo witness --as <name>`.

A ministry or a state runs one, with its own Ed25519 key (``DIR/witness.key``, 0600, made
on first start) and its own state (``DIR/state.json``: per log origin, the latest
checkpoint it cosigned, written atomically before it answers). For each
``POST /add-checkpoint`` it, in order:

1. parses the request (bounded; 400 on anything malformed);
2. knows the origin (404 otherwise) and finds the log's signature by the pinned log key
   (403 when none verifies);
3. refuses an old size above the checkpoint's (400);
4. refuses an old size that is not the size it last cosigned (409, its size in the body,
   ``text/x.tlog.size``), and a checkpoint of the same size with another root (409);
5. checks the consistency proof from its last cosigned checkpoint (422 when it fails);
6. records the new checkpoint, then answers with its cosignature/v1 line.

Steps 4 to 6 run under one lock, so two requests cannot roll its state back. A truncated
and re-signed log therefore cannot get a cosignature from a witness that saw the longer
history: the smaller tree is a 409, and a regrown one fails the proof. Every refusal is
logged with its reason, the origin and the sizes, never a key.

``GET /`` answers the witness's verifier key (``name+keyid+base64``), for its operator to
hand to auditors.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from broker.files import signing_key_file, write_file
from schemas.checkpoint import (
    MAX_NOTE_BYTES,
    MAX_PROOF_LINES,
    AddCheckpoint,
    Checkpoint,
    CosignerKey,
    cosign,
    format_vkey,
    parse_add_checkpoint,
    verify_log_signature,
)
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import SigningKey
from schemas.merkle_verify import EMPTY_ROOT, ProofError, verify_consistency

__all__ = ["KEY_FILE", "STATE_FILE", "Answer", "Witness", "serve_witness"]

log = logging.getLogger("istmo.witness")

KEY_FILE = "witness.key"
STATE_FILE = "state.json"
_MAX_BODY = MAX_NOTE_BYTES + 64 * (MAX_PROOF_LINES + 1)


@dataclass(frozen=True)
class Answer:
    """What the witness answers: an HTTP status, a content type and a body."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def _refuse(status: int, reason: str, origin: str = "-") -> Answer:
    log.warning("witness: refused (%d) for log %s: %s", status, origin[:128], reason)
    return Answer(status, reason.encode() + b"\n")


class Witness:
    """The witness's checks and state; the HTTP shell is ``serve_witness``."""

    def __init__(
        self,
        name: str,
        state_dir: Path,
        logs: list[CosignerKey],
        *,
        now_s: Callable[[], int],
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key: SigningKey = signing_key_file(state_dir / KEY_FILE, "witness key")
        self.cosigner = CosignerKey(name, self.key.verify_key)
        self.logs = {k.name: k for k in logs}
        self._now_s = now_s
        self._lock = threading.Lock()
        self._state = self._load()

    @property
    def vkey(self) -> str:
        return format_vkey(self.cosigner)

    def _load(self) -> dict[str, Checkpoint]:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text())
            out = {}
            for origin, rec in doc["logs"].items():
                out[origin] = Checkpoint(origin, int(rec["size"]), bytes.fromhex(rec["root"]))
            return out
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the witness state {path}") from exc

    def _save(self) -> None:
        doc = {
            "witness": self.name,
            "logs": {o: {"size": c.size, "root": c.root.hex()} for o, c in self._state.items()},
        }
        write_file(self.state_dir / STATE_FILE, json.dumps(doc, indent=1).encode(), 0o600)

    def latest(self, origin: str) -> Checkpoint | None:
        with self._lock:
            return self._state.get(origin)

    def add_checkpoint(self, raw: bytes) -> Answer:
        """Handle one add-checkpoint body (the numbered steps of the module docstring)."""
        # 1. Parse.
        try:
            req: AddCheckpoint = parse_add_checkpoint(raw)
            cp = req.note.checkpoint()
        except EnvelopeError as exc:
            return _refuse(400, f"malformed request: {exc}")
        # 2. A log it follows, signed by that log's key.
        log_key = self.logs.get(cp.origin)
        if log_key is None:
            return _refuse(404, "unknown log origin", cp.origin)
        try:
            verify_log_signature(req.note, log_key)
        except SignatureError as exc:
            return _refuse(403, f"checkpoint signature: {exc}", cp.origin)
        # 3. The old size cannot exceed the new one.
        if req.old_size > cp.size:
            return _refuse(400, f"old size {req.old_size} exceeds size {cp.size}", cp.origin)
        with self._lock:
            known = self._state.get(cp.origin)
            known_size = known.size if known else 0
            # 4. The log must know what this witness last cosigned.
            if req.old_size != known_size:
                log.warning(
                    "witness: refused (409) for log %s: old size %d, cosigned size %d",
                    cp.origin,
                    req.old_size,
                    known_size,
                )
                return Answer(409, f"{known_size}\n".encode(), "text/x.tlog.size")
            if (
                known is not None
                and known.size == cp.size
                and not hmac.compare_digest(known.root, cp.root)
            ):
                return _refuse(409, f"another root for size {cp.size}: a split view", cp.origin)
            # 5. The new tree extends the one it cosigned.
            try:
                verify_consistency(
                    known_size,
                    cp.size,
                    known.root if known else EMPTY_ROOT,
                    cp.root,
                    list(req.proof),
                )
            except ProofError as exc:
                return _refuse(
                    422, f"consistency proof {known_size}->{cp.size} fails: {exc}", cp.origin
                )
            # 6. Persist, then cosign.
            self._state[cp.origin] = cp
            self._save()
        sig = cosign(req.note.body, self.name, self.key, self._now_s())
        log.info("witness: cosigned %s at size %d", cp.origin, cp.size)
        return Answer(200, sig.line().encode(), "text/x.tlog.signature")


def serve_witness(
    witness: Witness, host: str, port: int, *, allowed_hosts: set[str] | None = None
) -> ThreadingHTTPServer:
    """Bind the witness's HTTP server (call ``serve_forever`` on it, or use a thread).

    Requests whose ``Host`` header is not the listening address (or ``localhost`` on the
    same port) are refused with 421, so a web page cannot reach a loopback witness through
    DNS rebinding.
    """

    class Handler(BaseHTTPRequestHandler):
        server_version = "istmo-witness"

        def log_message(self, format: str, *args: object) -> None:
            log.debug("witness: " + format, *args)

        def _send(self, a: Answer) -> None:
            self.send_response(a.status)
            self.send_header("Content-Type", a.content_type)
            self.send_header("Content-Length", str(len(a.body)))
            self.end_headers()
            self.wfile.write(a.body)

        def _host_ok(self) -> bool:
            host = self.headers.get("Host", "")
            bound = server.server_address[1]
            ok = allowed_hosts or {f"{host_name}:{bound}" for host_name in (host_of, "localhost")}
            if host in ok:
                return True
            self._send(_refuse(421, f"Host {host[:64]!r} is not this witness"))
            return False

        def do_GET(self) -> None:
            if not self._host_ok():
                return
            if self.path == "/":
                self._send(Answer(200, witness.vkey.encode() + b"\n"))
            else:
                self._send(Answer(404, b"not found\n"))

        def do_POST(self) -> None:
            if not self._host_ok():
                return
            if self.path != "/add-checkpoint":
                self._send(Answer(404, b"not found\n"))
                return
            try:
                length = int(self.headers.get("Content-Length", "-1"))
            except ValueError:
                length = -1
            if not 0 <= length <= _MAX_BODY:
                self._send(_refuse(413 if length > _MAX_BODY else 411, "bad Content-Length"))
                return
            self._send(witness.add_checkpoint(self.rfile.read(length)))

    host_of = host
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
