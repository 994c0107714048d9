"""Claiming a data directory before ``istmo up`` writes anything in it: one ``istmo up`` at a
time, no nats-server left behind by a killed one, a JetStream store of the right shape, and
the NATS mode (``nats_auth_of``) the directory was first run in.

Left to others: the ports (``broker.bus.server.check_port_free``) and starting anything
(``broker.runtime.stack``).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from broker.bus.claims import recorded_nats_auth
from broker.config import NatsAuth, Settings
from schemas.errors import ConfigError

__all__ = [
    "NATS_PID_FILE",
    "check_store_shape",
    "nats_auth_of",
    "reap_stale_nats",
    "take_data_dir_lock",
]

NATS_PID_FILE = "nats.pid"  # one pid per line: one server, or every node of a cluster


def take_data_dir_lock(data_dir: Path) -> IO[str]:
    """The exclusive lock of ``data_dir``, held while the returned file stays open.

    Raises:
        ConfigError: another ``istmo up`` holds it.
    """
    f = (data_dir / ".lock").open("w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.close()
        raise ConfigError(
            f"another istmo up is already running on {data_dir}",
            hint="stop it (Ctrl-C), or give this one another --data-dir",
        ) from exc
    return f


def check_store_shape(data_dir: Path, cluster_size: int) -> None:
    """Refuse to start a cluster on a single node's store, or the other way round: the
    streams (and the deliveries they hold) would seem to vanish.

    Raises:
        ConfigError: the store on disk has the other shape.
    """
    d = data_dir
    if cluster_size > 1 and (d / "nats").exists():
        raise ConfigError(
            f"{d} holds a single-node JetStream store ({d / 'nats'})",
            hint="run `istmo up` without --cluster there, or use another --data-dir for a cluster",
        )
    if cluster_size == 1 and (d / "nats-1").exists():
        raise ConfigError(
            f"{d} holds a cluster's JetStream stores ({d / 'nats-1'}...)",
            hint="run `istmo up --cluster 3` there, or use another --data-dir",
        )


def nats_auth_of(settings: Settings) -> NatsAuth:
    """How this data directory runs NATS (ADR 0013): as recorded when it was first run (a
    JetStream store from before the record is config mode's); for a new one, as asked.

    The mode cannot change for a data directory: in operator mode account ISTMO is named
    by its public key, so JetStream would look for the streams elsewhere.

    Raises:
        ConfigError: ``settings.nats_auth`` asks for the other mode than the recorded one.
    """
    d = settings.data_dir
    recorded = recorded_nats_auth(settings.broker_dir)
    if recorded is None and ((d / "nats").exists() or (d / "nats-1").exists()):
        recorded = "config"
    wanted = settings.nats_auth
    if recorded is not None and wanted is not None and wanted != recorded:
        raise ConfigError(
            f"{d} runs NATS in {recorded} mode; it cannot switch to {wanted} mode "
            "(its streams would seem to vanish)",
            hint=f"drop --nats-auth (or pass --nats-auth {recorded}), or use another --data-dir",
        )
    return recorded or wanted or "config"


def reap_stale_nats(settings: Settings, out: Callable[[str], None]) -> None:
    """Stop the nats-server processes an earlier, killed ``istmo up`` on this data directory
    left running (recorded in ``NATS_PID_FILE`` and started with this directory's configs);
    any other process with a recorded pid is left alone."""
    pid_path = settings.data_dir / NATS_PID_FILE
    try:
        pids = [int(line) for line in pid_path.read_text().split()]
    except (OSError, ValueError):
        pid_path.unlink(missing_ok=True)
        return
    confs = [str(settings.broker_dir / "nats.conf").encode()]
    confs += [str(settings.broker_dir / f"nats-{i}.conf").encode() for i in range(1, 6)]
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"nats-server" not in cmdline or not any(c in cmdline.split(b"\0") for c in confs):
            continue
        out(f"stopping nats-server pid {pid}, left running by an earlier istmo up")
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    pid_path.unlink(missing_ok=True)
