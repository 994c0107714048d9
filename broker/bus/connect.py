"""The broker's own connection to NATS, as its relay, sequencer and operator commands make it.

One function, so every process of the broker gets the same retries, the same clear error
for an untrusted TLS certificate, and the same translation of nats-py's errors.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import nats
import nats.errors
from nats.aio.client import Client as NATS

from schemas.errors import BusUnavailable, ConfigError

__all__ = ["connect_as_broker"]

log = logging.getLogger("istmo.bus")


async def connect_as_broker(
    url: str | Sequence[str],
    *,
    seed: str,
    name: str,
    reconnects: int = -1,
    user_jwt: str | None = None,
) -> NATS:
    """Connect as the broker's NATS user (nkey ``seed``, and in operator mode its
    ``user_jwt``, ADR 0013) to ``url`` (or any of a cluster's URLs), trying again
    ``reconnects`` times (-1: for ever, as workers do) when it is down.
    A bounded caller (a command, not a worker) gets BusUnavailable, not nats-py's logged
    tracebacks of each failed attempt.

    Raises:
        BusUnavailable: NATS is not reachable.
        ConfigError: NATS's TLS certificate does not verify against the trusted CAs
            (``SSL_CERT_FILE``): retrying cannot help, and nats-py would otherwise hang for
            ever after the failed handshake (nats-io/nats.py#718).
    """
    connected = False
    shown = url if isinstance(url, str) else ", ".join(url)

    async def on_error(exc: Exception) -> None:
        if not connected and isinstance(exc, ssl.SSLError):
            raise exc  # ends nats.connect: the same handshake fails on every retry
        if reconnects < 0:
            log.warning("nats: %s", exc)

    try:
        nc = await nats.connect(
            url if isinstance(url, str) else list(url),
            error_cb=on_error,
            nkeys_seed_str=seed,
            user_jwt_cb=None if user_jwt is None else lambda: user_jwt.encode(),
            name=name,
            connect_timeout=5,
            max_reconnect_attempts=reconnects,
            reconnect_time_wait=0.5,
        )
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"the certificate of NATS at {shown} could not be verified ({exc.verify_message})",
            hint="set SSL_CERT_FILE to the region's CA certificate",
        ) from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS with NATS at {shown} failed ({exc.reason or exc})") from exc
    except (OSError, nats.errors.Error) as exc:
        raise BusUnavailable(f"NATS is not reachable at {shown}") from exc
    connected = True
    return nc
