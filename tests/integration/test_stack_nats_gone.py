"""A stack whose nats-server died says so at once, with how it died, and stops cleanly when
asked: stopping never fails because NATS went first (nats-py's close raises on the lost
socket)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.stack_inproc import running_stack
from tests.waiting import eventually


def deaths(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the stack said of its nats-server dying."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("nats-server (pid")]


async def test_a_stack_stops_cleanly_after_its_nats_server_died(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR", logger="istmo.stack")
    async with running_stack(tmp_path / "istmo") as stack:
        assert stack.nats is not None
        pid = stack.nats.pid
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        await eventually(
            lambda: stack.nats is not None and stack.nats.pid is None, what="nats-server gone"
        )
        said = await eventually(lambda: deaths(caplog), what="the stack to say it died")
        assert said[0].startswith(f"nats-server (pid {pid}) was killed by SIGKILL; ")
        assert "nats.log ends: " in said[0]
    # Leaving the block stopped the stack and raised nothing; the death was said once.
    assert deaths(caplog) == [said[0]]


async def test_a_stack_stopped_on_purpose_says_nothing_of_the_kind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR", logger="istmo.stack")
    async with running_stack(tmp_path / "istmo") as stack:
        assert stack.nats is not None
        assert stack.nats.gone() is None
    assert deaths(caplog) == []
