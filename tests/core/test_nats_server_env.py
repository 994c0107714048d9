"""The environment nats-server runs with: Go told to hand freed memory back lazily
(``broker.bus.server.server_environment``, ADR 40), unless the operator said otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.bus.server import server_environment
from tests.conftest import make_nats_stack


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "madvdontneed=0"),
        ("", "madvdontneed=0"),
        ("gctrace=1", "gctrace=1,madvdontneed=0"),
        ("gctrace=1,", "gctrace=1,madvdontneed=0"),
        # The operator's own choice stands, whichever way it goes.
        ("madvdontneed=1", "madvdontneed=1"),
        ("gctrace=1,madvdontneed=1", "gctrace=1,madvdontneed=1"),
        (" madvdontneed=0", " madvdontneed=0"),
    ],
)
def test_godebug_added_unless_given(given: str | None, expected: str) -> None:
    base = {"PATH": "/usr/bin"} if given is None else {"PATH": "/usr/bin", "GODEBUG": given}
    env = server_environment(base)
    assert env["GODEBUG"] == expected
    assert env["PATH"] == "/usr/bin"  # the rest is passed on as it is
    assert base.get("GODEBUG") == given  # and the caller's mapping is left alone


def test_a_started_server_runs_with_it(nats_binary: Path, tmp_path: Path) -> None:
    stack = make_nats_stack(nats_binary, tmp_path, ["gt-police"])
    stack.server.start()
    try:
        pid = stack.server.pid
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"GODEBUG=madvdontneed=0" in environ
    finally:
        stack.server.stop()
