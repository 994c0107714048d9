"""The Host header as the API's guard reads it (``broker.api.guard.host_name``), and the
setting that adds names to serve (``ISTMO_ALLOWED_HOSTS``)."""

from __future__ import annotations

import pytest

from broker.api.guard import host_name
from broker.config import Settings
from schemas.errors import ConfigError


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"host", b"127.0.0.1:8844")], "127.0.0.1"),
        ([(b"host", b"LOCALHOST")], "localhost"),
        ([(b"host", b"[::1]:8844")], "::1"),
        ([(b"host", b"[::1]")], "::1"),
        ([(b"host", b"istmo.example.org")], "istmo.example.org"),
        ([(b"Host", b"istmo.example.org:443")], "istmo.example.org"),
        ([], None),  # no Host at all
        ([(b"host", b"a"), (b"host", b"b")], None),  # two: which one would a proxy use?
        ([(b"host", b"evil.example:80:80")], None),
        ([(b"host", b"evil.example:http")], None),
        ([(b"host", b"[::1]x")], None),
        ([(b"host", b"[::1")], None),
        ([(b"host", b":8844")], None),
        ([(b"host", "ñandú.example".encode())], None),
        ([(b"host", b"a" * 300)], None),
    ],
)
def test_host_name(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert host_name({"type": "http", "headers": headers}) == expected


def test_allowed_hosts_from_the_environment() -> None:
    env = {"ISTMO_ALLOWED_HOSTS": " Istmo.Example.org, proxy.internal ,"}
    assert Settings.from_env(env).allowed_hosts == ("istmo.example.org", "proxy.internal")
    assert Settings.from_env({}).allowed_hosts == ()


@pytest.mark.parametrize("bad", ["istmo.example.org:8844", "http://istmo.example.org", "a b"])
def test_allowed_hosts_refuses_what_is_not_a_name(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ISTMO_ALLOWED_HOSTS": bad})
    assert caught.value.hint is not None
    assert bad not in str(caught.value)


def test_trusted_proxies_from_the_environment() -> None:
    env = {"ISTMO_TRUSTED_PROXIES": " 127.0.0.1, 10.0.0.0/24 ,"}
    assert Settings.from_env(env).trusted_proxies == ("127.0.0.1", "10.0.0.0/24")
    assert Settings.from_env({}).trusted_proxies == ()  # X-Forwarded-For ignored


@pytest.mark.parametrize("bad", ["proxy.internal", "*", "10.0.0.0/99"])
def test_trusted_proxies_refuses_what_is_not_an_address(bad: str) -> None:
    with pytest.raises(ConfigError, match="ISTMO_TRUSTED_PROXIES"):
        Settings.from_env({"ISTMO_TRUSTED_PROXIES": bad})
