"""``istmo witness``: run a witness of the audit log until Ctrl-C (``broker.audit.witness``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from broker.audit.witness import Witness, serve_witness
from schemas.canonical import b64d
from schemas.checkpoint import NOTE_ALG, CosignerKey
from schemas.errors import ConfigError, EnvelopeError
from schemas.keys import VerifyKey

__all__ = ["parse_listen", "read_log_key", "witness_command"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` to a pair, or ConfigError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(f"--listen {text[:80]!r}: want HOST:PORT, e.g. 127.0.0.1:7301")
    return host, int(port)


def read_log_key(path: Path, origin: str) -> CosignerKey:
    """The log's public key (``log.pub``: base64 of 32 bytes) as a note key named ``origin``."""
    try:
        return CosignerKey(
            origin,
            VerifyKey(b64d(path.read_text().strip(), field="log key", max_bytes=32)),
            NOTE_ALG,
        )
    except (OSError, EnvelopeError) as exc:
        raise ConfigError(
            f"cannot read the log key {path}", hint="give the broker's DATA_DIR/broker/log.pub"
        ) from exc


def witness_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    host, port = parse_listen(args.listen)
    if host not in _LOOPBACK:
        print(
            f"witness: listening on {host}, not loopback: put a TLS proxy in front of it",
            file=sys.stderr,
        )
    log_key = read_log_key(args.log_key, args.origin)
    witness = Witness(args.name, args.state, [log_key], now_s=lambda: int(time.time()))
    try:
        server = serve_witness(witness, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = server.server_address[1]
    known = witness.latest(args.origin)
    print(f"witness {args.name} listening on http://{host}:{bound}", flush=True)
    print(f"key: {witness.vkey}", flush=True)
    print(
        f"log {args.origin}: "
        + (f"last cosigned size {known.size}" if known else "nothing cosigned yet")
        + "; Ctrl-C stops",
        flush=True,
    )

    def stop(_sig: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("witness: stopped", flush=True)
    return 0
