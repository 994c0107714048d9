"""A stack whose nats-server died stops cleanly when asked: stopping never fails because
NATS went first (nats-py's close raises on the lost socket)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration.stack_inproc import running_stack
from tests.waiting import eventually


async def test_a_stack_stops_cleanly_after_its_nats_server_died(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        assert stack.nats is not None
        pid = stack.nats.pid
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        await eventually(
            lambda: stack.nats is not None and stack.nats.pid is None, what="nats-server gone"
        )
    # Leaving the block stopped the stack and raised nothing.
