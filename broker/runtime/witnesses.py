"""Local witnesses for demos and tests: ``istmo up --witnesses N``.

Each runs ``broker.audit.witness`` on a thread of this process, on a loopback port of its
own, with its key and state in ``DATA_DIR/witnesses/<n>`` (kept across restarts, as a real
witness keeps its own). The stack writes ``DATA_DIR/broker/witnesses.json`` naming them,
their keys and the quorum, so the sequencer publishes checkpoints only with that quorum.
A file written here is marked ``"local": true``; ``istmo up`` without ``--witnesses``
removes such a file (never one an operator wrote), so the next run does not wait on
witnesses that are gone.

Local witnesses share the broker's machine, so they prove the wiring, not independence:
a real deployment runs ``istmo witness`` at other ministries (docs/audit.md#witnesses).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

from broker.audit.sequencer import DEFAULT_ORIGIN, ensure_log_key
from broker.audit.witness import Witness, serve_witness
from broker.config import Settings
from broker.files import write_file
from schemas.checkpoint import NOTE_ALG, CosignerKey
from schemas.errors import ConfigError

__all__ = ["LocalWitnesses", "forget_local_witnesses", "start_local_witnesses"]


@dataclass
class LocalWitnesses:
    """Witness servers running on threads of this process."""

    servers: list[ThreadingHTTPServer] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()
        for t in self.threads:
            t.join(timeout=5)


def _is_local_file(settings: Settings) -> bool:
    path = settings.witnesses_path
    try:
        return bool(json.loads(path.read_text()).get("local"))
    except (OSError, ValueError, AttributeError):
        return False


def forget_local_witnesses(settings: Settings) -> bool:
    """Remove a witnesses file an earlier ``istmo up --witnesses`` wrote; True if it did."""
    if settings.witnesses_file is None and _is_local_file(settings):
        settings.witnesses_path.unlink()
        return True
    return False


def start_local_witnesses(
    settings: Settings, n: int, quorum: int | None, out: Callable[[str], None] = print
) -> LocalWitnesses:
    """Start ``n`` witnesses on loopback and write the witnesses file with ``quorum``
    (default: a majority).

    Raises:
        ConfigError: a quorum outside 1..n, or an operator's witnesses file is in the way.
    """
    k = n // 2 + 1 if quorum is None else quorum
    if not 1 <= n <= 9 or not 1 <= k <= n:
        raise ConfigError(f"--witnesses {n} --witness-quorum {k}: want 1..9 witnesses, 1..N")
    path = settings.witnesses_path
    if path.exists() and not _is_local_file(settings):
        raise ConfigError(
            f"{path} names witnesses an operator configured",
            hint="drop --witnesses, or move that file away",
        )
    log_key = CosignerKey(DEFAULT_ORIGIN, ensure_log_key(settings.broker_dir), NOTE_ALG)
    running = LocalWitnesses()
    entries = []
    try:
        for i in range(1, n + 1):
            name = f"witness-{i}.local"
            w = Witness(
                name,
                settings.data_dir / "witnesses" / str(i),
                [log_key],
                now_s=lambda: int(time.time()),
            )
            server = serve_witness(w, "127.0.0.1", 0)
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
            )
            thread.start()
            running.servers.append(server)
            running.threads.append(thread)
            url = f"http://127.0.0.1:{server.server_address[1]}"
            entries.append({"name": name, "key": w.vkey, "url": url})
            out(f"witness   {name} on {url} (key {w.vkey})")
    except BaseException:
        running.stop()
        raise
    doc = {"local": True, "quorum": k, "witnesses": entries}
    write_file(path, json.dumps(doc, indent=1).encode(), 0o644)
    out(f"witnesses checkpoints need {k} of {n} cosignatures ({path})")
    return running
