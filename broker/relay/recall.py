"""Recalls, as pure functions: the checks on a withdrawal, and whom it must reach (ADR 15).

``check_withdrawal`` is the gate between an agency's ``recall`` request and any effect;
its numbered steps are the order a reviewer ticks off. ``split_recipients`` decides, from
what the relay found on the delivery stream, which routed recipients never had the
bulletin (their copy was removed before it reached them: they are told nothing) and which
must get the signed withdrawal. The rest (the names of notices and copies on the stream)
is here so the shell and the tests build them one way.

Nothing here awaits or reads a clock. Left to others: recording the withdrawal, scanning
and deleting copies, sending notices (``broker.relay.withdrawals``), the withdrawal's wire
format and signature (``schemas.withdrawal``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from broker.relay.own_documents import check_fresh, check_signed_by_caller
from broker.relay.queries import NotFound
from broker.store.registry import BulletinRow
from schemas.directory import AgencyRecord
from schemas.labels import Precedence
from schemas.subjects import URGENT_PRECEDENCES, deliver_durable, urgent_durable
from schemas.withdrawal import Withdrawal, verify_withdrawal

__all__ = [
    "NOT_YOURS",
    "CopyFate",
    "check_withdrawal",
    "copy_recipient",
    "delivery_durable",
    "notice_msg_id",
    "notice_precedence",
    "split_recipients",
]

# The answer to a recall of a bulletin that is not the caller's: unknown and another
# agency's alike, and the id is not repeated.
NOT_YOURS = "no bulletin of yours with this id was accepted"
_NOTICE_SUFFIX = "withdrawn"


def check_withdrawal(
    w: Withdrawal,
    *,
    caller: str,
    bulletin: BulletinRow | None,
    records: Mapping[str, AgencyRecord],
    now: int,
    max_skew_s: int,
) -> None:
    """Steps 1-5 on a parsed withdrawal, before anything is recorded.

    Args:
        w: the withdrawal, as the caller sent it.
        caller: the agency whose API subject it came on (nats-server authenticated it).
        bulletin: the bulletin it names, as accepted (None: never accepted).
        records: the directory, by agency id.
        now: the relay's clock, epoch seconds.
        max_skew_s: how far ``issued_at`` may be from ``now``.

    Raises:
        EnvelopeError: ``originator_mismatch`` (1), ``timestamp_out_of_window`` (4).
        SignatureError: ``key_not_current`` (2), ``signature_invalid`` (3).
        NotFound: (5) the bulletin was not accepted, or not from the caller: the same
            answer for both.
    """
    # 1-3. The caller's own, signed by its current key, the signature covering it.
    check_signed_by_caller(
        "withdrawal",
        named=w.originator,
        kid=w.kid,
        caller=caller,
        records=records,
        verify=lambda key: verify_withdrawal(w, key),
    )
    # 4. It was made now, not replayed from long ago.
    check_fresh(w.issued_at, now=now, max_skew_s=max_skew_s)
    # 5. The bulletin was accepted, and the caller is its recorded originator.
    if bulletin is None or bulletin.originator != caller:
        raise NotFound(NOT_YOURS)


@dataclass(frozen=True)
class CopyFate:
    """What became of one recipient's copy in the delivery stream.

    Attributes:
        seq: its stream sequence (the highest, if reconcile stored it twice); None if the
            stream no longer held it (expired, or removed by an earlier pass).
        removed: this pass deleted it (False: not found, or the stream refused).
        delivered_to: the stream sequence up to which the recipient's consumer had
            handed messages out, read after the delete (None: no such consumer).
    """

    seq: int | None
    removed: bool
    delivered_to: int | None


def split_recipients(
    routed: Iterable[str], fates: Mapping[str, CopyFate], receipted: Set[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Whom a withdrawal reaches: ``(removed, notified)``, each sorted.

    A recipient never had the bulletin only if this pass deleted its copy, its consumer had
    not handed that copy out (its delivered sequence, read after the delete, is below the
    copy's: it only grows), and it sent no receipt. Such a recipient is ``removed`` and told
    nothing. Every other routed recipient had it, may have had it, or its copy was gone
    already: it is ``notified``. When in doubt, tell.
    """
    removed: list[str] = []
    notified: list[str] = []
    for agency in sorted(set(routed)):
        fate = fates.get(agency)
        never = (
            fate is not None
            and fate.removed
            and fate.seq is not None
            and (fate.delivered_to or 0) < fate.seq
            and agency not in receipted
        )
        (removed if never else notified).append(agency)
    return tuple(removed), tuple(notified)


def notice_precedence(precedence: Precedence) -> Precedence:
    """Where a bulletin's withdrawal is delivered: IMMEDIATE (FLASH for a FLASH bulletin),
    so the recipient's urgent consumer takes it before any ROUTINE or PRIORITY backlog
    (ADR 7), and behind nothing but FLASH."""
    return Precedence.FLASH if precedence == Precedence.FLASH else Precedence.IMMEDIATE


def delivery_durable(agency: str, precedence: Precedence) -> str:
    """The consumer of ``agency``'s that reads its deliveries at ``precedence``."""
    if precedence in URGENT_PRECEDENCES:
        return urgent_durable(agency)
    return deliver_durable(agency)


def notice_msg_id(bulletin_id: str, agency: str) -> str:
    """The dedupe id of the withdrawal delivered to ``agency``."""
    return f"{bulletin_id}:{agency}:{_NOTICE_SUFFIX}"


def copy_recipient(msg_id: str, bulletin_id: str) -> str | None:
    """The recipient a delivery of ``bulletin_id`` with dedupe id ``msg_id`` went to:
    ``<bulletin>:<agency>`` as the relay stores it, or ``<bulletin>:<agency>:r<seq>`` as
    reconcile re-stores it. None for anything else (a withdrawal notice included)."""
    parts = msg_id.split(":")
    if len(parts) not in (2, 3) or parts[0] != bulletin_id or not parts[1]:
        return None
    if len(parts) == 3 and not (parts[2][:1] == "r" and parts[2][1:].isdigit()):
        return None
    return parts[1]
