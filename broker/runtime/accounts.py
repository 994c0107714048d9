"""Operator mode (ADR 0013): keeping nats-server's agency accounts in step with the registry.

Every agency in the registry has an account JWT (``broker.bus.natsauth``), which admits its
current NATS key while it is active and nobody otherwise. ``AccountSync.start`` reads what
the resolver holds (one node's, ``CLAIMS.PACK``) and pushes only the accounts that are
missing or stale, and on a cluster sends every other node the same JWTs;
``AccountSync.apply``, on every directory change, pushes only the accounts whose agency
changed since the last push. Neither reloads nats-server.

A node that did not store a push (it was down) is owed it: ``AccountSync.heal`` sends the
owed JWTs again every few seconds until every node has stored them, for nats-server's
nodes do not pass pushed JWTs on to a node that missed them.

Each JWT an account gets is issued a later second than its previous one: nodes of a
cluster that compare their stores keep the JWT issued last, and nats-io/jwt gives JWTs of
one account issued in the same second the same ``jti`` (``broker.bus.natsjwt``).

Pushing is ``broker.bus.claims``'; when to apply a change is ``broker.runtime.stack``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time

from broker.bus.claims import ClaimsPusher
from broker.bus.natsauth import AgencyAccount, NatsOperator
from broker.bus.natsjwt import JwtError, decode_jwt
from broker.clock import SYSTEM_CLOCK, Clock
from broker.store.registry import Registry
from schemas.errors import IstmoError

__all__ = ["AccountSync"]

log = logging.getLogger("istmo.stack")


class AccountSync:
    """The agencies' NATS accounts, as last pushed, and how to bring them up to date.

    Args:
        operator: the broker as NATS operator.
        registry: where the agencies, their status and NATS keys are.
        pusher: the system account's connection.
        clock: the time of day (the JWTs' ``iat``).
    """

    def __init__(
        self,
        operator: NatsOperator,
        registry: Registry,
        pusher: ClaimsPusher,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.operator = operator
        self.registry = registry
        self.pusher = pusher
        self._clock = clock
        self._pushed: dict[str, AgencyAccount] = {}  # what each account admits now
        self._issued: dict[str, int] = {}  # the iat of each account's latest JWT
        self._owed: dict[str, str] = {}  # JWTs some node has not stored, by agency
        self._lock = asyncio.Lock()

    def user_jwt(self, agency: str, nkey_public: str) -> str:
        """The user JWT ``agency`` connects with (for the enrolment answer)."""
        return self.operator.agency_user_jwt(agency, nkey_public, issued_at=self._clock.now_s())

    def _wanted(self) -> dict[str, AgencyAccount]:
        return {
            agency: AgencyAccount(agency, key, status == "active")
            for agency, status, key in self.registry.nats_admissions()
        }

    async def start(self) -> int:
        """Push every account the resolver lacks or holds stale; returns how many.

        Raises:
            BusUnavailable: no node answered.
            ConfigError: a node refused a JWT.
        """
        async with self._lock:
            stored = await self.pusher.stored()
            wanted = await asyncio.to_thread(self._wanted)
            stale, current = await asyncio.to_thread(self._stale, wanted, stored)
            if self.pusher.nodes > 1 and current:
                # The node that answered is up to date; another may have missed pushes.
                agencies = list(current)
                counts = await self.pusher.push([current[a] for a in agencies])
                self._owe(agencies, [current[a] for a in agencies], counts)
            return await self._push(stale)

    def _stale(
        self, wanted: dict[str, AgencyAccount], stored: dict[str, str]
    ) -> tuple[list[AgencyAccount], dict[str, str]]:
        """The accounts to issue anew, and the stored JWTs that are current, by agency."""
        stale, current = [], {}
        for agency, account in wanted.items():
            token = stored.get(self.operator.agency_account(agency))
            try:
                claims = None if token is None else decode_jwt(token, kind="account")
            except JwtError:
                claims = None  # not a JWT of ours: issued anew
            if claims is not None:
                self._issued[agency] = claims.issued_at
            if token and claims and self.operator.agency_account_is_current(claims, account):
                self._pushed[agency] = account
                current[agency] = token
            else:
                stale.append(account)
        return stale, current

    async def heal(self) -> int:
        """Send the JWTs some node has not stored again; returns how many are still owed.

        Raises:
            BusUnavailable: no node answered.
        """
        async with self._lock:
            if self._owed:
                owed = dict(self._owed)
                counts = await self.pusher.push(list(owed.values()))
                for (agency, token), count in zip(owed.items(), counts, strict=True):
                    if count >= self.pusher.nodes and self._owed.get(agency) == token:
                        del self._owed[agency]
            return len(self._owed)

    async def heal_forever(self, stop: asyncio.Event, interval_s: float = 3.0) -> None:
        """``heal`` every ``interval_s`` seconds until ``stop`` is set; a failure is logged
        and tried again."""
        owed = 0
        while not stop.is_set():
            try:
                now_owed = await self.heal()
            except IstmoError as exc:
                log.warning("could not resend NATS account JWTs: %s", exc)
                now_owed = len(self._owed)
            if now_owed != owed:
                log.info("%d NATS account JWT(s) still owed to a node", now_owed)
                owed = now_owed
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass

    def _owe(self, agencies: list[str], tokens: list[str], counts: list[int]) -> None:
        for agency, token, count in zip(agencies, tokens, counts, strict=True):
            if count < self.pusher.nodes:
                self._owed[agency] = token

    async def apply(self) -> int:
        """Push the account of every agency that changed since the last push; returns how
        many (0 when the change concerned nothing NATS enforces).

        Raises:
            BusUnavailable: no node answered.
            ConfigError: a node refused a JWT.
        """
        async with self._lock:
            wanted = await asyncio.to_thread(self._wanted)
            changed = [a for agency, a in wanted.items() if self._pushed.get(agency) != a]
            return await self._push(changed)

    async def _push(self, accounts: list[AgencyAccount]) -> int:
        if not accounts:
            return 0
        t0 = time.perf_counter()
        tokens = await asyncio.to_thread(self._render, accounts)
        t1 = time.perf_counter()
        counts = await self.pusher.push(tokens)
        agencies = [account.agency for account in accounts]
        for agency in agencies:
            self._owed.pop(agency, None)  # a newer JWT replaces one still owed
        self._owe(agencies, tokens, counts)
        for account in accounts:
            self._pushed[account.agency] = account
        log.info(
            "pushed %d NATS account(s): rendered in %.2f s, stored in %.2f s",
            len(accounts),
            t1 - t0,
            time.perf_counter() - t1,
        )
        return len(accounts)

    def _render(self, accounts: list[AgencyAccount]) -> list[str]:
        now = self._clock.now_s()
        tokens = []
        for account in accounts:
            # Later than the account's previous JWT, so every node keeps this one.
            issued_at = max(now, self._issued.get(account.agency, 0) + 1)
            self._issued[account.agency] = issued_at
            tokens.append(self.operator.agency_account_jwt(account, issued_at=issued_at))
        return tokens
