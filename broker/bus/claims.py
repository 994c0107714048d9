"""Operator mode's shell (ADR 0013): the operator's secret on disk, and pushing account JWTs.

``load_operator`` reads (or makes, mode 0600) ``broker_dir/nats-operator.key``, the one
secret every key of ``broker.bus.natsauth`` derives from; ``broker_dir/nats-auth`` records
which mode a data directory runs NATS in, and ``broker_user_jwt`` gives the broker's own
processes the user JWT they connect with in operator mode. ``ClaimsPusher`` is the broker's
connection as the system account's user: it pushes account JWTs with
``$SYS.REQ.CLAIMS.UPDATE``, which every node's ``full`` resolver answers (each stores the
JWT, applies it to the account if loaded, and replies), and it reads back what a node holds
with ``$SYS.REQ.CLAIMS.PACK``. It reports how many nodes stored each JWT: a node that was
down must be sent it again, for nats-server's nodes were not seen to pass it on (ADR 0013).
What the JWTs say is ``broker.bus.natsauth``'s; when to push them is
``broker.runtime.accounts``'.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.bus.natsauth import NatsOperator
from broker.clock import SYSTEM_CLOCK
from broker.config import NATS_AUTH_MODES, NatsAuth
from broker.files import write_private
from schemas.errors import BusUnavailable, ConfigError
from schemas.natskeys import user_public_key

__all__ = [
    "NATS_AUTH_FILE",
    "OPERATOR_KEY_FILE",
    "ClaimsPusher",
    "broker_user_jwt",
    "load_operator",
    "record_nats_auth",
    "recorded_nats_auth",
]

log = logging.getLogger("istmo.bus")

OPERATOR_KEY_FILE = "nats-operator.key"
NATS_AUTH_FILE = "nats-auth"
_MASTER_BYTES = 32
_UPDATE_SUBJECT = "$SYS.REQ.CLAIMS.UPDATE"
_PACK_SUBJECT = "$SYS.REQ.CLAIMS.PACK"
_IN_FLIGHT = 256  # pushes awaiting their answers at once
_MAX_ANSWER_BYTES = 64 * 1024


def load_operator(broker_dir: Path) -> NatsOperator:
    """The broker's NATS operator, from ``broker_dir/nats-operator.key`` (made on first use).

    Raises:
        ConfigError: the file exists but does not hold a 32-byte secret.
    """
    path = broker_dir / OPERATOR_KEY_FILE
    if not path.exists():
        master = secrets.token_bytes(_MASTER_BYTES)
        write_private(path, base64.b64encode(master) + b"\n")
        return NatsOperator(master)
    try:
        master = base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, ValueError, binascii.Error) as exc:
        raise ConfigError(f"cannot read the NATS operator key {path}") from exc
    if len(master) != _MASTER_BYTES:
        raise ConfigError(f"the NATS operator key {path} is not {_MASTER_BYTES} bytes")
    return NatsOperator(master)


def recorded_nats_auth(broker_dir: Path) -> NatsAuth | None:
    """The mode recorded for this data directory when it was first run, if any.

    Raises:
        ConfigError: the record holds something else.
    """
    try:
        text = (broker_dir / NATS_AUTH_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    for mode in NATS_AUTH_MODES:
        if text == mode:
            return mode
    raise ConfigError(f"{broker_dir / NATS_AUTH_FILE} names no NATS mode")


def record_nats_auth(broker_dir: Path, mode: NatsAuth) -> None:
    write_private(broker_dir / NATS_AUTH_FILE, mode.encode() + b"\n")


def broker_user_jwt(broker_dir: Path, relay_seed: str) -> str | None:
    """The user JWT the broker's own processes connect with, in account ISTMO, when this
    data directory runs NATS in operator mode (None in config mode: the nkey is enough).

    Raises:
        ConfigError: the operator key cannot be read.
    """
    if recorded_nats_auth(broker_dir) != "operator":
        return None
    operator = load_operator(broker_dir)
    return operator.relay_user_jwt(user_public_key(relay_seed), issued_at=SYSTEM_CLOCK.now_s())


class _Batch:
    """The answers to one batch of pushes, by index (``reply`` ends in ``.<index>``)."""

    def __init__(self, size: int, nodes: int) -> None:
        self.nodes = nodes
        self.ok = [0] * size
        self.errors: list[str] = []
        self.by_one = 0  # pushes at least one node has stored
        self.by_all = 0  # pushes every node has stored
        self.progress = asyncio.Event()

    async def on_answer(self, msg: Msg) -> None:
        try:
            index = int(msg.subject.rsplit(".", 1)[1])
            body = json.loads(msg.data[:_MAX_ANSWER_BYTES])
        except (ValueError, IndexError):
            return
        if not 0 <= index < len(self.ok):
            return
        error = body.get("error") if isinstance(body, dict) else None
        if error:
            # nats-server's own description, e.g. "jwt validation failed - ...": no secrets.
            self.errors.append(str(error.get("description", error))[:300])
        else:
            self.ok[index] += 1
            self.by_one += self.ok[index] == 1
            self.by_all += self.ok[index] == self.nodes
        self.progress.set()


class ClaimsPusher:
    """The broker's connection as the system account's user, pushing account JWTs.

    Args:
        nc: a connection as the system user (``connect``).
        nodes: how many nodes run a resolver (each answers every push).
        timeout: seconds without any answer after which a push is given up.
        grace: seconds to wait for the last nodes once one node stored every JWT.
    """

    def __init__(
        self, nc: NATS, *, nodes: int = 1, timeout: float = 5.0, grace: float = 0.5
    ) -> None:
        self._nc = nc
        self.nodes = nodes
        self.timeout = timeout
        self.grace = grace

    @classmethod
    async def connect(
        cls,
        urls: str | Sequence[str],
        operator: NatsOperator,
        *,
        nodes: int = 1,
        timeout: float = 5.0,
        grace: float = 0.5,
    ) -> ClaimsPusher:
        """Connect as the system account's user.

        Raises:
            BusUnavailable: NATS is not reachable.
        """
        token = operator.system_user_jwt(issued_at=SYSTEM_CLOCK.now_s())
        try:
            nc = await nats.connect(
                urls if isinstance(urls, str) else list(urls),
                nkeys_seed_str=operator.system_user_seed,
                user_jwt_cb=lambda: token.encode(),
                name="istmo-claims",
                connect_timeout=5,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
        except (OSError, nats.errors.Error) as exc:
            raise BusUnavailable("NATS is not reachable as the system account") from exc
        return cls(nc, nodes=nodes, timeout=timeout, grace=grace)

    async def close(self) -> None:
        await self._nc.close()

    async def push(self, jwts: Sequence[str]) -> list[int]:
        """Push account JWTs; return how many nodes stored each.

        Returns once every node stored each, or every JWT is stored by at least one node
        and the others stayed silent for ``grace`` seconds more: a node that is down, or
        was down, must be sent the JWTs it lacks again (nats-server's resolvers do not
        pass them on: each answers its own store comparison itself).

        Raises:
            ConfigError: a node refused a JWT (nats-server's reason is included).
            BusUnavailable: a JWT no node stored within ``timeout`` seconds.
        """
        if not jwts:
            return []
        batch = _Batch(len(jwts), self.nodes)
        prefix = self._nc.new_inbox()
        sub = await self._nc.subscribe(prefix + ".*", cb=batch.on_answer)
        try:
            await self._send(jwts, prefix, batch)
            await self._wait(batch)
        finally:
            await sub.unsubscribe()
        if batch.errors:
            raise ConfigError(f"NATS refused {len(batch.errors)} account JWT(s): {batch.errors[0]}")
        if min(batch.ok) == 0:
            raise BusUnavailable(f"no NATS node stored the account JWTs within {self.timeout:g} s")
        return list(batch.ok)

    async def _send(self, jwts: Sequence[str], prefix: str, batch: _Batch) -> None:
        for index, token in enumerate(jwts):
            # At most _IN_FLIGHT unanswered: a node answers in order, a batch of 10,000
            # would otherwise sit in buffers and time out behind itself.
            while index - batch.by_one >= _IN_FLIGHT and not batch.errors:
                batch.progress.clear()
                try:
                    await asyncio.wait_for(batch.progress.wait(), self.timeout)
                except TimeoutError:
                    return  # _wait reports what did arrive
            await self._nc.publish(_UPDATE_SUBJECT, token.encode(), reply=f"{prefix}.{index}")
        await self._nc.flush()

    async def _wait(self, batch: _Batch) -> None:
        while batch.by_all < len(batch.ok) and not batch.errors:
            # Once each JWT is stored somewhere, a silent node is down: wait less for it.
            wait = self.grace if batch.by_one == len(batch.ok) else self.timeout
            batch.progress.clear()
            try:
                await asyncio.wait_for(batch.progress.wait(), wait)
            except TimeoutError:
                return

    async def stored(self) -> dict[str, str]:
        """The account JWTs one node holds, by account public key (``CLAIMS.PACK``; the
        node nearest this connection answers).

        Raises:
            BusUnavailable: no node answered within ``timeout`` seconds.
        """
        found: dict[str, str] = {}
        done = asyncio.Event()
        progress = asyncio.Event()

        async def on_pack(msg: Msg) -> None:
            progress.set()
            if not msg.data:
                done.set()  # an empty message ends the pack
                return
            key, sep, token = msg.data.decode("ascii", "replace").partition("|")
            if sep:
                found[key] = token

        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=on_pack)
        try:
            # Our hash is empty: never equal to the node's, so it sends every JWT it holds.
            await self._nc.publish(_PACK_SUBJECT, b"", reply=inbox)
            while not done.is_set():
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), self.timeout)
                except TimeoutError as exc:
                    raise BusUnavailable(
                        f"no NATS node listed its account JWTs within {self.timeout:g} s"
                    ) from exc
        finally:
            await sub.unsubscribe()
        return found
