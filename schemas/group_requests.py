"""What agencies ask the broker about community groups (ADR 18), and its answers.

    op            request              reply
    groups        GroupsRequest        GroupsReply: every group with its manager and current
                                       signed epoch; the members too, of the groups named
    group-roster  RosterRequest        RosterReply: the members the next epoch of a group
                                       must hold, with their encryption keys (its manager
                                       only)
    group-epoch   EpochPost            EpochPostReply: a page of a new epoch's member wraps
                                       stored (its manager only); the epoch is current once
                                       every member's wrap is in
    group-keys    GroupKeysRequest     GroupKeysReply: the caller's own wraps of the epochs
                                       it names, with each signed statement

The models are strict and frozen like the rest of the wire contract; the answers are the
broker's (``broker.relay.group_api``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import MAX_GROUPS_PER_ENVELOPE, MAX_RECIPIENTS, Epoch, GroupName, Kid
from schemas.groups import MemberWrap, SignedEpoch
from schemas.ids import AgencyIdStr, JurisdictionStr

__all__ = [
    "MAX_GROUPS",
    "MAX_WRAPS_PER_POST",
    "EpochPost",
    "EpochPostReply",
    "EpochRef",
    "GroupInfo",
    "GroupKeysReply",
    "GroupKeysRequest",
    "GroupsReply",
    "GroupsRequest",
    "HeldKey",
    "RosterMember",
    "RosterReply",
    "RosterRequest",
]

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
MAX_GROUPS = 256  # groups one broker defines
# Member wraps in one post: with 10,000 members' ids, one post stays under 1 MiB.
MAX_WRAPS_PER_POST = 400
Topic = Annotated[str, Field(min_length=1, max_length=64)]
EpochNumber = Annotated[int, Field(ge=0, le=2**40)]


class GroupsRequest(BaseModel):
    """Every group (``names`` absent), or those named, with their members."""

    model_config = _STRICT

    names: tuple[GroupName, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_GROUPS_PER_ENVELOPE
    )


class GroupInfo(BaseModel):
    """A group: who manages it, whom it gathers, its current epoch (None before the first)
    and, when asked for by name, that epoch's members."""

    model_config = _STRICT

    name: GroupName
    manager: AgencyIdStr
    jurisdiction: JurisdictionStr | None
    topic: Topic | None
    min_clearance: int = Field(ge=0, le=3)
    epoch: SignedEpoch | None
    members: tuple[AgencyIdStr, ...] | None = Field(default=None, max_length=MAX_RECIPIENTS)


class GroupsReply(BaseModel):
    model_config = _STRICT

    groups: tuple[GroupInfo, ...] = Field(max_length=MAX_GROUPS)


class RosterRequest(BaseModel):
    model_config = _STRICT

    group: GroupName


class RosterMember(BaseModel):
    """A member the next epoch must hold, and the encryption key to wrap it to."""

    model_config = _STRICT

    agency: AgencyIdStr
    kid: Kid


class RosterReply(BaseModel):
    """The members the next epoch of ``group`` must hold; ``due`` when the current epoch
    (``current``, 0 for none) holds others, or other keys or clearances of them."""

    model_config = _STRICT

    group: GroupName
    current: EpochNumber
    due: bool
    members: tuple[RosterMember, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)


class EpochPost(BaseModel):
    """One page of a new epoch: its signed statement, its members and some of their wraps."""

    model_config = _STRICT

    epoch: SignedEpoch
    members: tuple[AgencyIdStr, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    wraps: tuple[MemberWrap, ...] = Field(max_length=MAX_WRAPS_PER_POST)


class EpochPostReply(BaseModel):
    """What the broker holds of the posted epoch: wraps stored, and whether it is current."""

    model_config = _STRICT

    group: GroupName
    epoch: Epoch
    stored: int = Field(ge=0, le=MAX_RECIPIENTS)
    missing: int = Field(ge=0, le=MAX_RECIPIENTS)
    current: bool


class EpochRef(BaseModel):
    model_config = _STRICT

    group: GroupName
    epoch: Epoch


class GroupKeysRequest(BaseModel):
    """The epochs whose keys the caller wants (those an envelope names)."""

    model_config = _STRICT

    wanted: tuple[EpochRef, ...] = Field(min_length=1, max_length=MAX_GROUPS_PER_ENVELOPE)


class HeldKey(BaseModel):
    """One epoch the caller is a member of: the manager's statement and the caller's wrap."""

    model_config = _STRICT

    epoch: SignedEpoch
    wrap: MemberWrap


class GroupKeysReply(BaseModel):
    model_config = _STRICT

    keys: tuple[HeldKey, ...] = Field(max_length=MAX_GROUPS_PER_ENVELOPE)
