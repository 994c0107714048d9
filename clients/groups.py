"""Community group keys in the SDK (ADR 18), pure: which groups cover a bulletin, and the
checks on an epoch key before it is used.

A publisher seals under a group's epoch key only if it holds that key (it is a member)
and every member of the epoch, as its manager signed them, is among the agencies the relay
said may receive the bulletin (or is the publisher itself): ``cover``. The relay checks
the same against its own record before it routes (``broker.relay.cover``). An epoch key
is used, to seal or to open, only once the manager's signature over its statement verifies
under the manager's signing key in the signed directory, the members listed hash to the
signed digest, and the key matches the signed commitment (``held_key``).

Left to others: asking the broker (``clients.sdk``), the crypto (``schemas.groups``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from schemas.directory import AgencyRecord
from schemas.envelope import MAX_GROUPS_PER_ENVELOPE
from schemas.errors import DecryptionError, SignatureError
from schemas.groups import (
    EpochKey,
    MemberWrap,
    SignedEpoch,
    members_digest,
    unwrap_epoch_key,
    verify_epoch,
)
from schemas.keystore import KeystoreFile

__all__ = ["Cover", "KnownEpoch", "checked_members", "cover", "held_key"]


@dataclass(frozen=True)
class KnownEpoch:
    """A current epoch this agency holds the key of, with its members (signed)."""

    key: EpochKey
    members: frozenset[str]


@dataclass(frozen=True)
class Cover:
    """How to seal: under these epoch keys for ``covered``, one wrap each for ``rest``.
    ``members`` gives each group's signed members, which the header addresses as a whole
    (ADR 37)."""

    keys: tuple[EpochKey, ...]
    covered: frozenset[str]
    rest: tuple[str, ...]
    members: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)


def _manager_key(signed: SignedEpoch, manager: AgencyRecord | None):  # type: ignore[no-untyped-def]
    st = signed.statement
    if manager is None or manager.id != st.manager or manager.status != "active":
        raise SignatureError("the group's manager is not an active agency", code="group_untrusted")
    key = next((k for k in manager.signing_keys if k.kid == signed.kid), None)
    if key is None or (key.revoked_at is not None and key.revoked_at <= st.issued_at):
        raise SignatureError("epoch not signed by a key of its manager", code="group_untrusted")
    return key.verify_key()


def held_key(
    signed: SignedEpoch,
    wrap: MemberWrap,
    *,
    agency: str,
    manager: AgencyRecord | None,
    keystore: KeystoreFile,
) -> EpochKey:
    """The epoch key in ``agency``'s ``wrap``, once the statement checks out.

    Steps:
      1. the statement is signed by a key the directory lists for its manager, not revoked
         when issued, and the manager is active;
      2. the wrap is this agency's, to a key its keystore holds;
      3. it opens, to the key the statement commits to.

    Raises:
        SignatureError: step 1.
        DecryptionError: steps 2-3.
    """
    st = verify_epoch(signed, _manager_key(signed, manager))
    if wrap.agency != agency:
        raise DecryptionError("epoch key does not open", code="not_a_member")
    mine = keystore.encryption_key(wrap.kid)
    if mine is None:
        raise DecryptionError("epoch key does not open", code="recipient_key_unknown")
    return unwrap_epoch_key(st, wrap, agency, mine)


def checked_members(signed: SignedEpoch, members: Sequence[str]) -> frozenset[str]:
    """``members`` if they are the ones the statement signed (count and digest).

    Raises:
        SignatureError: they are not.
    """
    st = signed.statement
    if len(members) != st.member_count or members_digest(members) != st.members_digest:
        raise SignatureError("group members differ from the signed epoch", code="group_untrusted")
    return frozenset(members)


def cover(permitted: Collection[str], known: Sequence[KnownEpoch], *, publisher: str) -> Cover:
    """The groups to seal under for ``permitted``, and who still needs a wrap of its own.

    A group is usable only if every member is permitted or is the publisher: whoever holds
    its key can open the bulletin. Largest new coverage first; a group that adds nobody is
    left out. At most ``MAX_GROUPS_PER_ENVELOPE`` groups.
    """
    allowed = set(permitted)
    usable = [k for k in known if k.members <= allowed | {publisher}]
    left = set(allowed)
    chosen: list[EpochKey] = []
    members: dict[str, frozenset[str]] = {}
    covered: set[str] = set()
    while usable and len(chosen) < MAX_GROUPS_PER_ENVELOPE:
        best = max(usable, key=lambda k: (len(k.members & left), k.key.group))
        gain = best.members & left
        if not gain:
            break
        chosen.append(best.key)
        members[best.key.group] = best.members
        covered |= best.members & allowed
        left -= gain
        usable.remove(best)
    return Cover(tuple(chosen), frozenset(covered), tuple(sorted(left)), members)


def needed(
    envelope_groups: Mapping[str, int], held: Mapping[tuple[str, int], EpochKey]
) -> list[tuple[str, int]]:
    """The (group, epoch) pairs of an envelope whose keys are not held yet."""
    return [(g, e) for g, e in envelope_groups.items() if (g, e) not in held]
