"""The relay's check of a bulletin's group cover (ADR 18): pure, every input passed in.

A bulletin sealed with community group keys is addressed to every recipient in its header,
wrapped one by one for some and under a group's epoch key for the rest. Whoever holds that
epoch key opens it: every member of the epoch, as the broker recorded the members when the
epoch became current. So, before anything is delivered:

  1. each group it uses has a current epoch, and the bulletin uses that epoch and its key
     (``unknown_group``, ``stale_group_epoch``): a member removed since an older epoch
     holds that older key;
  2. every member of that epoch is addressed and permitted by this bulletin's receive
     decisions, or is its originator, who sealed it (``group_member_denied``): an agency
     the policy denies never holds a key that opens it;
  3. every addressed recipient has a wrap of its own or is a member of a group used
     (``uncovered_recipient``).

Since ADR 37 a header may address an epoch as a whole (``audience``) instead of listing
its members: ``addressed`` expands it from the registry's record of the epoch, after
checking that the record holds as many members, hashing to the same digest, as the
originator signed (``audience_mismatch``). The steps above then run on that list.

Each refusal is an ``EnvelopeError`` whose code goes to the rejection row, the audit log
and the publisher (``broker.relay.plan``).
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from broker.store.groups import CurrentEpoch, EpochMembers
from schemas.envelope import MAX_RECIPIENTS, Envelope, Header
from schemas.errors import EnvelopeError

__all__ = ["addressed", "check_cover"]


def addressed(header: Header, members: Mapping[tuple[str, int], EpochMembers]) -> tuple[str, ...]:
    """Every agency ``header`` addresses, sorted: its ``recipients`` and, for each epoch of
    its ``audience`` (ADR 37), that epoch's recorded members but the originator.

    Args:
        header: the verified header.
        members: the recorded members of the epochs the audience names
            (``broker.store.groups.epoch_members``).

    Raises:
        EnvelopeError: an epoch never became current (``unknown_group``), its record
            differs from what the originator signed (``audience_mismatch``), or together
            they address more agencies than one bulletin may (``too_many_recipients``).
    """
    if header.audience is None:
        return header.recipients
    out = set(header.recipients)
    for a in header.audience:
        got = members.get((a.group, a.epoch))
        if got is None:
            raise EnvelopeError(
                f"group {a.group} has no epoch {a.epoch}: seal for its members one by one",
                code="unknown_group",
            )
        if got.count != a.member_count or got.digest != a.members_digest:
            raise EnvelopeError(
                f"group {a.group} epoch {a.epoch} has other members than the bulletin "
                "names: publish again (the SDK reads the epoch's signed members)",
                code="audience_mismatch",
            )
        out |= got.members
    out.discard(header.originator)
    if len(out) > MAX_RECIPIENTS:
        raise EnvelopeError(
            f"the bulletin addresses {len(out)} agencies, more than one bulletin may "
            f"({MAX_RECIPIENTS}): split it",
            code="too_many_recipients",
        )
    return tuple(sorted(out))


def check_cover(
    env: Envelope,
    *,
    allowed: Set[str],
    epochs: Mapping[str, CurrentEpoch],
    to: Set[str] | None = None,
) -> None:
    """Steps 1-3 above; nothing to check without group wraps.

    Args:
        env: the parsed, verified envelope.
        allowed: the candidates this bulletin's receive decisions allow.
        epochs: the current epoch of each group the bulletin uses, as recorded.
        to: every agency the bulletin addresses (``addressed``); its header's recipients
            when not given.

    Raises:
        EnvelopeError: with ``code`` naming the failed step.
    """
    if env.groups is None:
        return
    addressed = set(env.header.recipients) if to is None else set(to)
    covered = {w.recipient for w in env.wraps}
    for g in env.groups:
        current = epochs.get(g.group)
        # 1. The group's current epoch and key, nothing older (or made up).
        if current is None:
            raise EnvelopeError(
                f"group {g.group} has no current epoch: seal for its members one by one",
                code="unknown_group",
            )
        if g.epoch != current.epoch or g.kid != current.kid:
            raise EnvelopeError(
                f"group {g.group} is at epoch {current.epoch}, not {g.epoch}: publish again "
                "(the SDK asks for the current epoch)",
                code="stale_group_epoch",
            )
        # 2. Every holder of the key is addressed and permitted.
        outside = current.members - (allowed & addressed) - {env.header.originator}
        if outside:
            raise EnvelopeError(
                f"group {g.group} (epoch {g.epoch}) has {len(outside)} members this bulletin "
                "may not reach: seal for the permitted ones one by one, or use a group "
                "wholly inside them",
                code="group_member_denied",
            )
        covered |= current.members
    # 3. Every addressed recipient can open it.
    uncovered = addressed - covered
    if uncovered:
        raise EnvelopeError(
            f"{len(uncovered)} addressed recipients have neither a wrap nor a group that "
            "covers them",
            code="uncovered_recipient",
        )
