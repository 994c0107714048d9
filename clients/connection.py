"""Connecting to NATS as one agency, with its own nkey and inbox prefix, and saying
clearly why a connection failed (no server, refused credentials, untrusted TLS).

Where the broker runs NATS in operator mode (ADR 0013) the keystore also holds the agency's
user JWT, handed over at enrolment: it names the agency's account, and the nkey still signs
the server's challenge.

nats-server confines the connection to the agency's own subjects; what the SDK does on
it is ``clients.sdk``'s.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref

import nats
import nats.errors
from nats.aio.client import Client as NATS

from schemas.errors import BusUnavailable
from schemas.keystore import KeystoreFile
from schemas.subjects import inbox_prefix

__all__ = ["RECONNECT_ATTEMPTS", "connect_agency", "connection_closed", "connection_lost"]

log = logging.getLogger("istmo.sdk")

# Connections closed because NATS refused the agency's credentials once connected
# (suspended, revoked or re-enrolled while connected, or just as it connected), and the
# address each was made to.
_REFUSED: weakref.WeakKeyDictionary[NATS, tuple[str, str]] = weakref.WeakKeyDictionary()


def _refused(nats_url: str, agency: str) -> BusUnavailable:
    return BusUnavailable(
        f"NATS at {nats_url} refused {agency}'s credentials "
        "(suspended, revoked, re-enrolled, or not in this directory)",
        code="not_authorized",
    )


def connection_lost(nc: NATS, agency: str) -> BusUnavailable:
    """What to raise for an operation on ``nc`` that found it closed: refused credentials
    where that is why (``connect_agency`` closed it), else NATS gone."""
    refused = _REFUSED.get(nc)
    if refused is not None:
        return _refused(*refused)
    return BusUnavailable(f"{agency}'s connection to NATS is closed")


def connection_closed() -> BusUnavailable:
    """For a command that found its connection closed under it, wherever in the SDK: the
    refusal, if NATS refused one of this process's connections, else NATS gone."""
    refused = next(iter(list(_REFUSED.values())), None)
    if refused is not None:
        return _refused(*refused)
    return BusUnavailable("the connection to NATS was closed", hint="is the broker running?")


# Ride out a NATS restart or a cluster's leader election (F-04, F-05): about a minute of
# attempts, 0.5 s apart, before the client gives up and says the broker is gone.
RECONNECT_ATTEMPTS = 120


async def connect_agency(keystore: KeystoreFile, nats_url: str, *, timeout: float) -> NATS:
    """Connect to NATS at ``nats_url`` as ``keystore``'s agency.

    Once connected, the connection rides out restarts and elections; a suspension or
    revocation while connected closes it at once (retrying cannot help).

    Raises:
        BusUnavailable: NATS is not reachable at ``nats_url``, refused the key (code
            ``not_authorized``), or presented a certificate that does not verify against
            the trusted CAs (``SSL_CERT_FILE``; code ``tls_untrusted``, or ``tls_failed``).
    """
    errors: list[str] = []
    connected: list[NATS] = []
    closing: set[asyncio.Task[None]] = set()

    async def on_error(exc: Exception) -> None:
        if not connected and isinstance(exc, ssl.SSLError):
            # A TLS handshake that failed (an untrusted certificate, a wrong name) fails
            # the same way on every retry, and nats-py 2.16 then hangs for ever closing
            # the socket (nats-io/nats.py#718): raised here, it ends nats.connect.
            raise exc
        # Permission violations reach only this callback; log the subject, no payload.
        # Before the first connection the failures are summed up in the one error raised
        # below: each attempt's own line ("Authorization Violation", "Connection reset
        # by peer") would only bury it.
        errors.append(str(exc))
        log.log(logging.WARNING if connected else logging.DEBUG, "nats: %s", exc)
        if connected and "authorization violation" in str(exc).lower():
            # Suspended or revoked while connected: retrying cannot help; stop now.
            _REFUSED[connected[0]] = (nats_url, keystore.agency)
            task = asyncio.get_running_loop().create_task(connected[0].close())
            closing.add(task)
            task.add_done_callback(closing.discard)

    try:
        user_jwt = keystore.nats_jwt
        nc = await nats.connect(
            nats_url,
            nkeys_seed_str=keystore.nats_seed,
            user_jwt_cb=None if user_jwt is None else lambda: user_jwt.encode(),
            inbox_prefix=inbox_prefix(keystore.agency),
            name=keystore.agency,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=3,  # a first connection fails fast
            reconnect_time_wait=0.5,
            error_cb=on_error,
        )
    except ssl.SSLCertVerificationError as exc:
        raise BusUnavailable(
            f"the certificate of NATS at {nats_url} could not be verified ({exc.verify_message})",
            code="tls_untrusted",
            hint="set SSL_CERT_FILE to the region's CA certificate",
        ) from exc
    except ssl.SSLError as exc:
        raise BusUnavailable(
            f"TLS with NATS at {nats_url} failed ({exc.reason or exc})", code="tls_failed"
        ) from exc
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        detail = "; ".join(errors[-1:]) or type(exc).__name__
        if any("authorization violation" in e.lower() for e in errors):
            raise _refused(nats_url, keystore.agency) from exc
        raise BusUnavailable(f"broker not running at {nats_url} ({detail})") from exc
    # Once connected, ride out restarts and elections (nats-py reads this per attempt).
    nc.options["max_reconnect_attempts"] = RECONNECT_ATTEMPTS
    connected.append(nc)
    return nc
