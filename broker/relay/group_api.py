"""The agency API's community-group operations (ADR 18): ``groups``, ``group-roster``,
``group-epoch`` and ``group-keys`` (``schemas.group_requests``).

A posted epoch is checked in this order, each step refusing with a reason code:
  1. strict parse, within the envelope size limit (a page of wraps is large);
  2. the group exists (``unknown_group``) and the caller is its manager
     (``not_group_manager``), active (``agency_not_active``);
  3. the statement names this group and the caller as manager, and is signed by the
     caller's newest unrevoked signing key (``key_not_current``, ``signature_invalid``),
     within the clock skew of now (``timestamp_out_of_window``);
  4. it is the next epoch, or the one this manager began with the same key
     (``stale_group_epoch``);
  5. the members are the statement's (count and digest) and exactly the group's roster
     now (``roster_changed``): nobody the directory removed, suspended or lowered below
     the group's clearance since, and nobody missing;
  6. each wrap is for a member, under the member's current encryption key, and of the
     right length (``malformed``).
Then the wraps are stored; once every member's is in, the epoch becomes current with a
``group.rotated`` audit event, and bulletins may use it (and no earlier one).

The broker holds the wraps but never an epoch key: each is HPKE ciphertext to a member.
Left to others: the roster (``broker.directory.groups``), the tables
(``broker.store.groups``), the check of a bulletin's cover (``broker.relay.cover``).
"""

from __future__ import annotations

from broker.audit import events
from broker.directory.groups import GroupRule, roster
from broker.relay.api_part import ApiPart
from broker.relay.queries import NotFound
from broker.store.groups import (
    GroupEpochRow,
    GroupRow,
    GroupWrapRow,
    current_epochs,
    group_rows,
    member_wraps,
    newest_epoch,
    store_wraps,
)
from schemas.canonical import b64d, canonical_json
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError, PolicyDenied, SignatureError
from schemas.group_requests import (
    EpochPost,
    EpochPostReply,
    GroupInfo,
    GroupKeysReply,
    GroupKeysRequest,
    GroupsReply,
    GroupsRequest,
    HeldKey,
    RosterMember,
    RosterReply,
    RosterRequest,
)
from schemas.groups import MemberWrap, SignedEpoch, members_digest, verify_epoch

__all__ = ["GROUP_OPS", "GroupApi"]

GROUP_OPS = ("groups", "group-roster", "group-epoch", "group-keys")
_WRAP_BYTES = {"MLKEM768-X25519": 1120 + 32 + 16, "X25519": 32 + 32 + 16}


def rule_of(row: GroupRow) -> GroupRule:
    return GroupRule(row.name, row.manager, row.jurisdiction, row.topic, row.min_clearance)


class GroupApi(ApiPart):
    """Answers the group operations for a caller the subject names."""

    def answer(
        self, caller: str, op: str, data: bytes, now: int
    ) -> GroupsReply | RosterReply | EpochPostReply | GroupKeysReply:
        """The reply to ``op``; raises IstmoError for a refusal (the caller audits it)."""
        small = self.settings.max_request_bytes
        if op == "groups":
            return self.groups(parse_model(GroupsRequest, data, max_bytes=small, what="request"))
        if op == "group-roster":
            req = parse_model(RosterRequest, data, max_bytes=small, what="request")
            return self.roster(caller, req.group)
        if op == "group-keys":
            keys = parse_model(GroupKeysRequest, data, max_bytes=small, what="request")
            return self.keys(caller, keys)
        # 1. A page of wraps is as large as an envelope may be.
        big = max(small, self.settings.max_envelope_bytes)
        return self.post(caller, parse_model(EpochPost, data, max_bytes=big, what="request"), now)

    def _group(self, name: str) -> GroupRow:
        row = next((g for g in group_rows(self.registry) if g.name == name), None)
        if row is None:
            raise NotFound(f"no group named {name}", code="unknown_group")
        return row

    def _managed(self, caller: str, name: str) -> GroupRow:
        # 2. The group's manager, active.
        row = self._group(name)
        if row.manager != caller:
            # Audited (a refusal, not an answer): nobody but the manager should try.
            raise EnvelopeError(
                f"only the manager of group {name} may do this", code="not_group_manager"
            )
        rec = self.directory.records.get(caller)
        if rec is None or rec.status != "active":
            raise PolicyDenied(f"agency {caller} is not active", code="agency_not_active")
        return row

    def groups(self, req: GroupsRequest) -> GroupsReply:
        rows = group_rows(self.registry)
        if req.names is not None:
            rows = [r for r in rows if r.name in set(req.names)]
        epochs = current_epochs(self.registry, [r.name for r in rows])
        out = []
        for r in rows:
            cur = epochs.get(r.name)
            out.append(
                GroupInfo(
                    name=r.name,
                    manager=r.manager,
                    jurisdiction=r.jurisdiction,
                    topic=r.topic,
                    min_clearance=r.min_clearance,
                    epoch=None
                    if cur is None
                    else SignedEpoch.model_validate_json(cur.statement, strict=True),
                    members=tuple(sorted(cur.members))
                    if cur is not None and req.names is not None
                    else None,
                )
            )
        return GroupsReply(groups=tuple(out))

    def roster(self, caller: str, name: str) -> RosterReply:
        row = self._managed(caller, name)
        now = roster(rule_of(row), self.directory)
        if not now.members:
            raise PolicyDenied(
                f"group {name} has no roster: its manager needs an active record and an "
                "encryption key",
                code="agency_not_active",
            )
        cur = current_epochs(self.registry, [name]).get(name)
        newest = newest_epoch(self.registry, name)
        return RosterReply(
            group=name,
            current=newest.epoch if newest is not None else 0,
            due=cur is None or cur.roster != now.digest,
            members=tuple(RosterMember(agency=a, kid=k) for a, k in now.members),
        )

    def keys(self, caller: str, req: GroupKeysRequest) -> GroupKeysReply:
        rec = self.directory.records.get(caller)
        if rec is None or rec.status != "active":
            # A suspended agency gets no key, not even of an epoch it was in.
            raise PolicyDenied(f"agency {caller} is not active", code="agency_not_active")
        held = member_wraps(self.registry, caller, [(w.group, w.epoch) for w in req.wanted])
        return GroupKeysReply(
            keys=tuple(
                HeldKey(
                    epoch=SignedEpoch.model_validate_json(e.statement, strict=True),
                    wrap=MemberWrap(agency=w.agency, kid=w.kid, kem=w.kem, enc=w.enc),
                )
                for e, w in held
            )
        )

    def post(self, caller: str, post: EpochPost, now: int) -> EpochPostReply:
        st = post.epoch.statement
        row = self._managed(caller, st.group)  # 2
        # 3. Signed by the manager's current key, recently.
        if st.manager != caller:
            raise EnvelopeError("the statement names another manager", code="malformed")
        rec = self.directory.records[caller]
        live = [k for k in rec.signing_keys if k.revoked_at is None]
        current = max(live, key=lambda k: k.created_at) if live else None
        if current is None or current.kid != post.epoch.kid:
            raise SignatureError("epoch not signed by the current key", code="key_not_current")
        verify_epoch(post.epoch, current.verify_key())
        if abs(st.issued_at - now) > self.settings.max_clock_skew_s:
            raise EnvelopeError(
                "the epoch was issued outside the allowed clock skew",
                code="timestamp_out_of_window",
            )
        # 4. The next epoch, or the one begun.
        newest = newest_epoch(self.registry, st.group)
        if newest is not None and newest.epoch == st.epoch:
            if newest.kid != st.kid or newest.manager != caller:
                raise EnvelopeError(
                    f"epoch {st.epoch} of {st.group} was begun with another key: post "
                    f"epoch {st.epoch + 1}",
                    code="stale_group_epoch",
                )
        elif st.epoch != (newest.epoch if newest is not None else 0) + 1:
            want = (newest.epoch if newest is not None else 0) + 1
            raise EnvelopeError(
                f"group {st.group} is due epoch {want}, not {st.epoch}", code="stale_group_epoch"
            )
        # 5. The members signed, and the roster now.
        members = post.members
        if list(members) != sorted(set(members)):
            raise EnvelopeError("members must be sorted and unique", code="malformed")
        if st.member_count != len(members) or st.members_digest != members_digest(members):
            raise EnvelopeError("the members are not the statement's", code="malformed")
        now_roster = roster(rule_of(row), self.directory)
        if members != now_roster.ids:
            raise EnvelopeError(
                f"the members of {st.group} changed: ask for its roster again and post "
                "the next epoch",
                code="roster_changed",
            )
        kids = dict(now_roster.members)
        # 6. Each wrap for a member, under its current key.
        wraps = []
        for w in post.wraps:
            if kids.get(w.agency) != w.kid:
                raise EnvelopeError(
                    f"wrap for {w.agency} is not for a member's current key",
                    code="malformed",
                )
            if len(b64d(w.enc, field="wrap.enc", max_bytes=4096)) != _WRAP_BYTES[w.kem]:
                raise EnvelopeError(f"wrap for {w.agency} has the wrong length", code="malformed")
            wraps.append(
                GroupWrapRow(
                    group=st.group, epoch=st.epoch, agency=w.agency, kid=w.kid, kem=w.kem, enc=w.enc
                )
            )
        epoch = GroupEpochRow(
            group=st.group,
            epoch=st.epoch,
            manager=caller,
            kid=st.kid,
            statement=canonical_json(post.epoch.model_dump(mode="json")).decode(),
            members=",".join(members),
            roster=now_roster.digest,
            posted_at=now,
        )
        stored, missing, is_current = store_wraps(
            self.registry,
            epoch,
            wraps,
            event_of=lambda at: events.group_rotated(
                st.group,
                epoch=st.epoch,
                manager=caller,
                members=len(members),
                kid=st.kid,
                at=at * 1000,
            ),
            now=now,
        )
        return EpochPostReply(
            group=st.group, epoch=st.epoch, stored=stored, missing=missing, current=is_current
        )
