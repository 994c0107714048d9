"""The community group keys an agency holds, asked for from the broker (ADR 18): as a
member (to open a bulletin, or to seal under a group it belongs to) and as a manager (to
make and hand out a new epoch).

Keys live in memory only: a member asks for its wrap of an epoch when an envelope names it
(the broker keeps every epoch's wraps), so nothing new is kept on disk, and a suspended
agency, which the broker no longer answers, gets none. Left to others: the checks
(``clients.groups``), the crypto (``schemas.groups``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pydantic import BaseModel

from clients.groups import KnownEpoch, checked_members, held_key
from clients.requests import make_request
from schemas.agency import ApiOp
from schemas.directory import AgencyRecord
from schemas.errors import DecryptionError, IstmoError, SignatureError
from schemas.group_requests import (
    MAX_WRAPS_PER_POST,
    EpochPost,
    EpochPostReply,
    EpochRef,
    GroupKeysReply,
    GroupKeysRequest,
    GroupsReply,
    GroupsRequest,
    RosterReply,
    RosterRequest,
)
from schemas.groups import EpochKey, epoch_statement, new_epoch_key, sign_epoch, wrap_epoch_key
from schemas.keystore import KeystoreFile

__all__ = ["GroupKeys", "Rotation"]

log = logging.getLogger("istmo.sdk")
R = TypeVar("R", bound=BaseModel)


class Ask(Protocol):
    """One request to the broker as this agency (``IstmoClient._ask``)."""

    async def __call__(self, op: ApiOp, request: BaseModel, reply: type[R]) -> R: ...


Records = Callable[[list[str]], Awaitable[dict[str, AgencyRecord]]]


@dataclass(frozen=True)
class Rotation:
    """A group epoch this manager made current (or found current already)."""

    group: str
    epoch: int
    members: int
    rotated: bool


class GroupKeys:
    """One agency's epoch keys and the requests that get them."""

    def __init__(
        self,
        agency: str,
        keystore: Callable[[], KeystoreFile],
        ask: Ask,
        records: Records,
        check_keys: Callable[[Sequence[AgencyRecord]], Awaitable[None]] | None = None,
    ) -> None:
        self.agency = agency
        self._keystore = keystore
        self._ask = ask
        self._records = records
        # Members' keys seen in the audit log before a key is wrapped to them (ADR 28).
        self._check_keys = check_keys
        self._keys: dict[tuple[str, int], EpochKey] = {}
        self._members: dict[tuple[str, int], frozenset[str]] = {}

    async def _groups(self, names: Sequence[str] | None = None) -> GroupsReply:
        req = make_request(GroupsRequest, names=tuple(names) if names else None)
        reply = await self._ask("groups", req, GroupsReply)
        return reply

    async def keys_for(self, refs: Iterable[tuple[str, int]]) -> list[EpochKey]:
        """The epoch keys of ``refs`` this agency is a member of, checked (``held_key``).

        Raises:
            BusUnavailable, IstmoError: the broker did not answer, or refused.
        """
        wanted = sorted(set(refs))
        missing = [r for r in wanted if r not in self._keys]
        if missing:
            req = make_request(
                GroupKeysRequest, wanted=tuple(EpochRef(group=g, epoch=e) for g, e in missing)
            )
            reply = await self._ask("group-keys", req, GroupKeysReply)
            managers = await self._records(sorted({h.epoch.statement.manager for h in reply.keys}))
            for h in reply.keys:
                st = h.epoch.statement
                if (st.group, st.epoch) not in missing:
                    continue  # not asked for: ignored
                try:
                    key = held_key(
                        h.epoch,
                        h.wrap,
                        agency=self.agency,
                        manager=managers.get(st.manager),
                        keystore=self._keystore(),
                    )
                except (SignatureError, DecryptionError) as exc:
                    log.warning("refused the key of %s epoch %d: %s", st.group, st.epoch, exc.code)
                    continue
                self._keys[(st.group, st.epoch)] = key
        return [self._keys[r] for r in wanted if r in self._keys]

    async def known(self) -> list[KnownEpoch]:
        """The current epochs this agency holds the key of, with their signed members."""
        listed = (await self._groups()).groups
        current = {(g.name, g.epoch.statement.epoch): g.epoch for g in listed if g.epoch}
        keys = await self.keys_for(current)
        out: list[KnownEpoch] = []
        for key in keys:
            ref = (key.group, key.epoch)
            if ref not in self._members:
                info = next(iter((await self._groups([key.group])).groups), None)
                if info is None or info.epoch is None or info.members is None:
                    continue
                if info.epoch.statement.epoch != key.epoch:
                    continue  # rotated meanwhile: the next publish finds the new one
                try:
                    self._members[ref] = checked_members(current[ref], info.members)
                except SignatureError as exc:
                    log.warning("refused the members of %s: %s", key.group, exc.code)
                    continue
            out.append(KnownEpoch(key, self._members[ref]))
        return out

    async def rotate(
        self, *, force: bool = False, now: Callable[[], float] = time.time
    ) -> list[Rotation]:
        """Make a new epoch of each group this agency manages whose roster changed (or of
        every one, with ``force``), wrap its key to every member and post it.

        Raises:
            IstmoError: the broker refused (``roster_changed``: the directory changed
                while posting; run it again).
        """
        done: list[Rotation] = []
        for g in (await self._groups()).groups:
            if g.manager != self.agency:
                continue
            roster = await self._ask("group-roster", RosterRequest(group=g.name), RosterReply)
            if not roster.due and not force:
                cur = g.epoch.statement if g.epoch else None
                done.append(
                    Rotation(g.name, cur.epoch if cur else 0, cur.member_count if cur else 0, False)
                )
                continue
            done.append(await self._post(roster, now))
        return done

    async def _post(self, roster: RosterReply, now: Callable[[], float]) -> Rotation:
        ids = [m.agency for m in roster.members]
        records = await self._records(ids)
        publics = {}
        for m in roster.members:
            rec = records.get(m.agency)
            enc = rec.encryption_key if rec is not None and rec.status == "active" else None
            if enc is None or enc.kid != m.kid:
                # The broker's roster and the signed directory disagree: never wrap to a key
                # the directory does not list. The broker refuses the epoch without it.
                raise SignatureError(
                    f"the roster of {roster.group} names a key the directory does not list "
                    f"for {m.agency}: try again in a moment",
                    code="directory_mismatch",
                )
            publics[m.agency] = enc.public_key()
        if self._check_keys is not None:
            await self._check_keys([r for a in ids if (r := records.get(a)) is not None])
        key = new_epoch_key(roster.group, roster.current + 1)
        st = epoch_statement(key, manager=self.agency, members=ids, issued_at=int(now()))
        signed = sign_epoch(st, self._keystore().signing_key())
        wraps = [wrap_epoch_key(key, st, a, publics[a]) for a in ids]
        reply: EpochPostReply | None = None
        for start in range(0, len(wraps), MAX_WRAPS_PER_POST):
            page = EpochPost(
                epoch=signed,
                members=tuple(ids),
                wraps=tuple(wraps[start : start + MAX_WRAPS_PER_POST]),
            )
            answer = await self._ask("group-epoch", page, EpochPostReply)
            reply = answer
        if reply is None or not reply.current:
            raise IstmoError(f"epoch {key.epoch} of {roster.group} did not become current")
        self._keys[(key.group, key.epoch)] = key
        self._members[(key.group, key.epoch)] = frozenset(ids)
        return Rotation(roster.group, key.epoch, len(ids), True)
