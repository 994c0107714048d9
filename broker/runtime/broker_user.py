"""The broker's own NATS user: its seed in the data directory, its user JWT in operator
mode, and a connection as it, with nothing else of the data directory loaded.

A command that only changes the registry and tells the running stack (``istmo admin
suspend``) connects through here: opening the whole data directory (``DataDir``) means
importing the policy engine, the API's token code and the directory service, most of a
second that a suspension waits for before it takes effect (issue 16).
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client as NATS

from broker.bus.claims import load_operator
from broker.bus.connect import connect_as_broker
from broker.bus.natsauth import NatsOperator
from broker.clock import SYSTEM_CLOCK
from broker.config import Settings
from broker.files import write_private
from broker.runtime.claim import nats_auth_of
from schemas.natskeys import new_user_seed, user_public_key

__all__ = ["connect_broker", "relay_jwt", "relay_seed"]


def relay_seed(settings: Settings) -> str:
    """The nkey seed of the broker's NATS user, made on first use."""
    path = settings.broker_dir / "relay.seed"
    if path.exists():
        return path.read_text().strip()
    seed = new_user_seed()
    write_private(path, seed.encode() + b"\n")
    return seed


def relay_jwt(operator: NatsOperator | None, seed: str) -> str | None:
    """The user JWT of the broker's NATS user ``seed`` in operator mode (None in config
    mode, without an ``operator``)."""
    if operator is None:
        return None
    return operator.relay_user_jwt(user_public_key(seed), issued_at=SYSTEM_CLOCK.now_s())


async def connect_broker(
    settings: Settings,
    url: str | Sequence[str],
    *,
    seed: str | None = None,
    operator: NatsOperator | None = None,
    reconnects: int = -1,
) -> NATS:
    """The broker's own connection to NATS (``broker.bus.connect``) for the data directory
    of ``settings``; its seed and operator are read from there unless given."""
    seed = relay_seed(settings) if seed is None else seed
    if operator is None and nats_auth_of(settings) == "operator":
        operator = load_operator(settings.broker_dir)
    return await connect_as_broker(
        url,
        seed=seed,
        name="istmo-relay",
        reconnects=reconnects,
        user_jwt=relay_jwt(operator, seed),
    )
