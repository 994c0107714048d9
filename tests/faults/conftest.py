"""Fixtures of the fault tests: a single-node stack (``istmo up`` as a subprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stackproc import UpProcess

# Each test appends its measured figures here (load, counts, recovery), one JSON line.
FIGURES = Path(__file__).resolve().parent / "figures.jsonl"


@pytest.fixture
def up_no_relay(tmp_path: Path) -> Iterator[UpProcess]:
    """``istmo up --no-relay``: NATS, API and sequencer; relays are the test's."""
    up = UpProcess(tmp_path / "istmo", extra=("--no-relay",)).start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[UpProcess]:
    """The whole single-node stack, relay included."""
    up = UpProcess(tmp_path / "istmo").start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def figures() -> Path:
    return FIGURES
