"""A connection NATS closed under a command is said in one line, as a refusal where NATS
refused the agency (``clients.connection`` remembers it), instead of nats-py's traceback."""

from __future__ import annotations

import weakref

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from clients import connection
from clients.cli import _connection_closed


def test_other_exceptions_are_left_alone() -> None:
    assert _connection_closed(ValueError("x")) is None
    assert _connection_closed(nats.errors.TimeoutError()) is None


def test_a_closed_connection_is_nats_gone_unless_it_was_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "_REFUSED", weakref.WeakKeyDictionary())  # no other's
    closed = _connection_closed(nats.errors.ConnectionClosedError())
    assert closed is not None
    assert (closed.code, str(closed)) == ("bus_unavailable", "the connection to NATS was closed")
    nc = NATS()
    connection._REFUSED[nc] = ("nats://127.0.0.1:4222", "gt-police")
    refused = _connection_closed(nats.errors.ConnectionClosedError())
    assert refused is not None
    assert refused.code == "not_authorized"
    assert "NATS at nats://127.0.0.1:4222 refused gt-police's credentials" in str(refused)
    assert str(connection.connection_lost(nc, "gt-police")) == str(refused)
