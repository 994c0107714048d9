"""Bulletins, receipts and agencies' requests: what the relay decides and records."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from broker.audit.events._common import (
    MAX,
    one_off,
)
from schemas.audit import AuditEvent, agency_set_digest
from schemas.labels import Labels

__all__ = [
    "MAX_DECIDED_BYTES",
    "MAX_DECIDED_GROUPS",
    "SET_MIN_AGENCIES",
    "DecisionGroup",
    "UnknownSet",
    "agencies_listed",
    "agency_set_digest",
    "bulletin_accepted",
    "bulletin_decided",
    "bulletin_received",
    "bulletin_rejected",
    "bulletin_withdrawn",
    "decided_groups",
    "delivery_withdrawn",
    "receipt_rejected",
    "request_rejected",
]

# A ``bulletin.decided`` event stays within 32 KiB, half the leaf a remote verifier accepts
# (``clients.log_verifier.MAX_LEAF_BYTES``): at most this many bytes of agency and policy
# ids (2,100 agencies of 12 characters, 900 of the longest, 32), under 1 KiB of fixed
# fields, and groups few enough that its 5 fixed keys and two per group fit the schema's
# 32 data keys.
MAX_DECIDED_BYTES = 31 * 1024
MAX_DECIDED_GROUPS = 13
_GROUP_OVERHEAD = 24  # '"why.13":[],"who.13":[],'
# A group of more candidates than this that the policy decided alike is recorded by
# reference to an ``agencies.listed`` set (ADR 36): the set once, each bulletin a digest.
SET_MIN_AGENCIES = 64
_DIGEST_COST = 70  # a set's digest, quoted, with a comma


# ---------------------------------------------------------------------------- bulletins
def bulletin_accepted(
    bulletin_id: str,
    *,
    originator: str,
    labels: Labels,
    envelope_digest: str,
    recipients: Sequence[str],
    policy_version: str,
    directory_version: str,
    policy_ids: Sequence[str],
    at: int,
    supersedes: str | None = None,
    in_reply_to: str | None = None,
    thread: str | None = None,
    rfi_due: int | None = None,
) -> AuditEvent:
    """The relay accepted a bulletin: its labels, digest, signed recipients and the
    publish decision's versions and policies; for a correction, the bulletin it corrects
    (ADR 15); for a reply, what it answers and its thread, and for a request for
    information, when answers are due (ADR 16). Each only when set."""
    links = {"supersedes": supersedes, "in_reply_to": in_reply_to, "thread": thread}
    correction: dict[str, str | int] = {k: v for k, v in links.items() if v is not None}
    if rfi_due is not None:
        correction["rfi_due"] = rfi_due
    return AuditEvent(
        event_id=f"{bulletin_id}:accepted",
        type="bulletin.accepted",
        time=at,
        actor=originator,
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={
            "topic": labels.topic,
            "classification": labels.classification.value,
            "tlp": labels.tlp.value,
            "rel_to": labels.rel_to,
            "envelope_digest": envelope_digest,
            "recipients": tuple(recipients),
            "policy_version": policy_version,
            "directory_version": directory_version,
            "policy_ids": tuple(policy_ids),
            **correction,
        },
    )


@dataclass(frozen=True)
class DecisionGroup:
    """Candidates the policy decided alike on one bulletin.

    Attributes:
        outcome: ``routed`` (allowed and addressed: it was delivered), ``unaddressed``
            (allowed, but the originator did not seal it for them) or the denial code
            (``policy_deny``, ``default_deny``, ``policy_error``).
        policy_ids: the deciding policies' sorted ``@id``s (none on a default deny).
        agencies: the candidates, sorted (for a group written by reference: those of
            the set that are not in ``but``).
        listed: written by reference: the digest of the ``agencies.listed`` set they
            are drawn from (ADR 36), or None.
        but: the agencies of that set that are not in the group, sorted.
    """

    outcome: str
    policy_ids: tuple[str, ...]
    agencies: tuple[str, ...]
    listed: str | None = None
    but: tuple[str, ...] = ()


class UnknownSet(LookupError):
    """A ``bulletin.decided`` event names an ``agencies.listed`` set its reader does not
    hold (``args[0]``: the digest)."""


def agencies_listed(digest: str, agencies: Sequence[str], *, at: int) -> tuple[AuditEvent, ...]:
    """A set of agencies that ``bulletin.decided`` events refer to by ``digest`` (ADR 36),
    in parts of at most ``MAX_DECIDED_BYTES`` of ids: ``agencies:<digest>:<n>``, each with
    the set's digest and size, its ``part`` of ``parts`` and its ``who``. Written once,
    before the first event that refers to it; the same set again is the same events."""
    ordered = tuple(sorted(agencies))
    parts = _decided_parts([DecisionGroup("listed", (), ordered)])
    return tuple(
        AuditEvent(
            event_id=f"agencies:{digest}:{n}",
            type="agencies.listed",
            time=at,
            actor="relay",
            subject=digest,
            data={
                "digest": digest,
                "count": len(ordered),
                "part": n,
                "parts": len(parts),
                "who": part[0].agencies if part else (),
            },
        )
        for n, part in enumerate(parts, 1)
    )


def bulletin_decided(
    bulletin_id: str,
    *,
    originator: str,
    policy_version: str,
    directory_version: str,
    groups: Sequence[DecisionGroup],
    at: int,
) -> tuple[AuditEvent, ...]:
    """The receive decisions on a bulletin: who it was routed to, and every candidate
    refused with the code and policies that refused it, grouped by outcome and policies.

    One event per bulletin, ``<bulletin>:decided:1``, unless the groups outgrow
    ``MAX_DECIDED_BYTES`` or ``MAX_DECIDED_GROUPS`` (a broadcast to thousands of
    agencies): then the next parts are ``:decided:2`` and on, each saying ``part`` of
    ``parts``. Group ``i`` of a part is ``why.i`` (the outcome, then the policy ids) and
    ``who.i`` (its agencies); ``decided_groups`` reads them back.
    """
    parts = _decided_parts(groups)
    return tuple(
        AuditEvent(
            event_id=f"{bulletin_id}:decided:{n}",
            type="bulletin.decided",
            time=at,
            actor="relay",
            subject=bulletin_id,
            bulletin_id=bulletin_id,
            data={
                "originator": originator,
                "policy_version": policy_version,
                "directory_version": directory_version,
                "part": n,
                "parts": len(parts),
                **{
                    key: value
                    for i, g in enumerate(part, 1)
                    for key, value in (
                        (f"why.{i}", (g.outcome, *g.policy_ids)),
                        (f"from.{i}", (g.listed, *g.but))
                        if g.listed is not None
                        else (f"who.{i}", g.agencies),
                    )
                },
            },
        )
        for n, part in enumerate(parts, 1)
    )


def decided_groups(
    data: Mapping[str, object],
    listed: Callable[[str], Sequence[str] | None] | None = None,
) -> list[DecisionGroup]:
    """The groups of one ``bulletin.decided`` event's data (as stored: lists or tuples),
    in order, each with its agencies; anything not laid out as ``bulletin_decided``
    writes it is skipped.

    A group written by reference (``from.i``: a set's digest, then the agencies of the
    set left out) is read through ``listed``, which gives a set's agencies by digest.

    Raises:
        UnknownSet: a group refers to a set ``listed`` does not give (or none was passed).
    """
    out: list[DecisionGroup] = []
    for i in range(1, MAX_DECIDED_GROUPS + 1):
        why, who, ref = data.get(f"why.{i}"), data.get(f"who.{i}"), data.get(f"from.{i}")
        if not isinstance(why, list | tuple) or not why:
            break
        outcome, policies = str(why[0]), tuple(map(str, why[1:]))
        if isinstance(who, list | tuple):
            out.append(DecisionGroup(outcome, policies, tuple(map(str, who))))
            continue
        if not isinstance(ref, list | tuple) or not ref:
            break
        digest, but = str(ref[0]), tuple(map(str, ref[1:]))
        members = listed(digest) if listed is not None else None
        if members is None:
            raise UnknownSet(digest)
        left_out = set(but)
        agencies = tuple(a for a in members if a not in left_out)
        out.append(DecisionGroup(outcome, policies, agencies, digest, but))
    return out


def _decided_parts(groups: Sequence[DecisionGroup]) -> list[list[DecisionGroup]]:
    """Cut ``groups`` into parts of at most ``MAX_DECIDED_GROUPS`` groups and
    ``MAX_DECIDED_BYTES`` of ids each; a group too big for what is left of a part goes on
    in the next, its outcome and policies repeated. Always at least one (maybe empty)
    part, and every part holds at least one agency of each group in it."""
    parts: list[list[DecisionGroup]] = [[]]
    used = 0
    for g in groups:
        head = _GROUP_OVERHEAD + sum(_cost(x) for x in (g.outcome, *g.policy_ids))
        if g.listed is not None:
            # By reference: a digest and the few left out, never cut across parts.
            cost = head + _DIGEST_COST + sum(map(len, g.but)) + 3 * len(g.but)
            if parts[-1] and (
                len(parts[-1]) == MAX_DECIDED_GROUPS or used + cost > MAX_DECIDED_BYTES
            ):
                parts.append([])
                used = 0
            parts[-1].append(g)
            used += cost
            continue
        left = g.agencies
        while True:
            first = _cost(left[0]) if left else 0
            if parts[-1] and (
                len(parts[-1]) == MAX_DECIDED_GROUPS or used + head + first > MAX_DECIDED_BYTES
            ):
                parts.append([])
                used = 0
            used += head
            whole = sum(map(len, left)) + 3 * len(left)  # the common case: it all fits
            if used + whole <= MAX_DECIDED_BYTES:
                take, used = len(left), used + whole
            else:
                # As many as fit (at least one): the ids' running cost, searched.
                running = list(accumulate(map(len, left)))
                fits = bisect_right(
                    range(len(left)),
                    MAX_DECIDED_BYTES - used,
                    key=lambda i: running[i] + 3 * (i + 1),
                )
                take = max(fits, 1)
                used += running[take - 1] + 3 * take
            parts[-1].append(DecisionGroup(g.outcome, g.policy_ids, left[:take]))
            left = left[take:]
            if not left:
                break
    return parts


def _cost(value: str) -> int:
    """The bytes of one id in the canonical JSON: the id, its quotes and a comma."""
    return len(value) + 3


def bulletin_rejected(
    ingest_seq: int,
    *,
    sender: str,
    bulletin_id: str | None,
    reason: str,
    message: str,
    size: int,
    at: int,
) -> AuditEvent:
    """The relay refused an ingest message (``reason`` is the refusal code). Filed under
    the stream sequence: a forged bulletin id never touches another agency's bulletin."""
    return AuditEvent(
        event_id=f"ingest:{ingest_seq}:rejected",
        type="bulletin.rejected",
        time=at,
        actor=sender,
        subject=bulletin_id or f"ingest:{ingest_seq}",
        bulletin_id=bulletin_id,
        reason=reason,
        data={"message": message[:MAX], "ingest_seq": ingest_seq, "size": size},
    )


def bulletin_received(
    bulletin_id: str, recipient: str, *, received_at: int, envelope_digest: str, at: int
) -> AuditEvent:
    """``recipient``'s signed receipt was verified."""
    return AuditEvent(
        event_id=f"{bulletin_id}:received:{recipient}",
        type="bulletin.received",
        time=at,
        actor=recipient,
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={"received_at": received_at, "envelope_digest": envelope_digest},
    )


def receipt_rejected(
    receipt_seq: int, *, sender: str, reason: str, message: str, at: int
) -> AuditEvent:
    """The relay refused a receipt (stream sequence ``receipt_seq``)."""
    return AuditEvent(
        event_id=f"receipt:{receipt_seq}:rejected",
        type="receipt.rejected",
        time=at,
        actor=sender,
        subject=f"receipt:{receipt_seq}",
        reason=reason,
        data={"message": message[:MAX]},
    )


def request_rejected(
    caller: str,
    op: str,
    *,
    reason: str,
    message: str,
    at: int,
    bulletin_id: str | None = None,
) -> AuditEvent:
    """An agency's request over NATS (``istmo.api.<caller>.<op>``) was refused; a refused
    recall names the bulletin it was for (``bulletin_id``, a well-formed id)."""
    return AuditEvent(
        event_id=one_off("request"),
        type="request.rejected",
        time=at,
        actor=caller,
        subject=f"api.{op}",
        bulletin_id=bulletin_id,
        reason=reason,
        data={"message": message[:MAX]},
    )


# ---------------------------------------------------------------------------- withdrawals
def bulletin_withdrawn(
    bulletin_id: str,
    *,
    originator: str,
    reason_sha256: str,
    reason_chars: int,
    issued_at: int,
    kid: str,
    at: int,
) -> AuditEvent:
    """The originator withdrew its bulletin (ADR 15), recorded before any copy is touched.
    The reason is the originator's free text: only its digest and length are kept here."""
    return AuditEvent(
        event_id=f"{bulletin_id}:withdrawn",
        type="bulletin.withdrawn",
        time=at,
        actor=originator,
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={
            "reason_sha256": reason_sha256,
            "reason_chars": reason_chars,
            "issued_at": issued_at,
            "kid": kid,
        },
    )


def delivery_withdrawn(
    bulletin_id: str,
    *,
    removed: Sequence[str],
    notified: Sequence[str],
    copies_removed: int,
    copies_kept: int,
    at: int,
) -> AuditEvent:
    """A withdrawal was carried out: whose copies were removed before they reached them
    (``removed``, not told), who was sent the signed withdrawal (``notified``), how many
    copies the delivery stream gave up and how many it would not."""
    return AuditEvent(
        event_id=f"{bulletin_id}:withdrawal-done",
        type="delivery.withdrawn",
        time=at,
        actor="relay",
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={
            "removed": tuple(sorted(removed)),
            "notified": tuple(sorted(notified)),
            "copies_removed": copies_removed,
            "copies_kept": copies_kept,
        },
    )
