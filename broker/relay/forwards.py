"""Forwarding with consent, as pure functions: the checks before anything moves (ADR 20).

``check_ask`` is the gate of a recipient's ``forward-request``; ``check_grant`` the gate
of the originator's answer; ``check_forward`` the relay's extra steps for a forward
envelope at ingest, after the checks every bulletin passes (``broker.relay.checks``).
Their numbered steps are the order a reviewer ticks off. Every refusal raises an
``IstmoError`` whose ``code`` goes to the audit log and the caller; nothing here records,
delivers or reads a clock.

Who may have a forward is decided on the original bulletin's facts (its originator and
originating state, the forward's labels), so a forward reaches no one the original's
rules would not let in; the forwarder's consent comes from the originator's signed grant,
or from the policy's ``forward`` action without one. The files a forward passes on are
the original's chunks, not copies: it cites their references, which must add up over
what is stored of the original (F7), and its recipient fetches them through it.

Left to others: recording requests and answers (``broker.store.forwards``), answering on
NATS (``broker.relay.forward_requests``), the wire formats (``schemas.forwarding``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from broker.policy.model import BulletinFacts, Decider, Decision
from broker.relay.attachment_checks import StoredChunk, check_cited
from broker.store.registry import BulletinRow
from schemas.directory import AgencyRecord
from schemas.envelope import Header
from schemas.errors import EnvelopeError, PolicyDenied, SignatureError
from schemas.forwarding import ForwardGrant, check_not_weaker, verify_grant
from schemas.labels import Labels

__all__ = [
    "NOT_RECEIVED",
    "ForwardVerdict",
    "Original",
    "check_ask",
    "check_forward",
    "check_grant",
    "forward_labels",
    "original_facts",
]

# One answer for a bulletin that does not exist and one the caller was not routed: a
# forward is no way to learn which ids exist.
NOT_RECEIVED = "no bulletin with this id was routed to you: you can forward only what you received"


@dataclass(frozen=True)
class Original:
    """What the registry holds of a bulletin someone would forward.

    Attributes:
        row: the bulletin as accepted.
        routed: the agencies it was delivered to.
        withdrawn: its originator withdrew it (ADR 15).
    """

    row: BulletinRow
    routed: frozenset[str]
    withdrawn: bool

    @property
    def labels(self) -> Labels:
        return Labels.model_validate_json(self.row.labels, strict=False)


@dataclass(frozen=True)
class ForwardVerdict:
    """A forward the relay may accept: how consent was given, the forward decision, and
    the facts its recipient's receive decision is made on."""

    consent: str  # "originator" (a signed grant) or "policy"
    decision: Decision
    receive_facts: BulletinFacts


def original_facts(original: Original, records: Mapping[str, AgencyRecord]) -> BulletinFacts:
    """The original bulletin's facts, as the policy decided it."""
    row = original.row
    origin = records.get(row.originator)
    return BulletinFacts(
        bulletin_id=row.id,
        originator=row.originator,
        origin_state=origin.state if origin else None,
        labels=original.labels,
        not_before=row.not_before,
        expires_at=row.expires_at,
    )


def forward_labels(original: Labels, recipient: str, *, consent: bool) -> Labels:
    """The labels a forward carries: the original's, naming ``recipient`` too when the
    originator consented (so a TLP:RED or AMBER+STRICT bulletin can reach it)."""
    if not consent or recipient in original.named:
        return original
    return original.model_copy(update={"named": (*original.named, recipient)})


def check_ask(
    *,
    caller: str,
    recipient: str,
    original: Original | None,
    records: Mapping[str, AgencyRecord],
    now: int,
) -> None:
    """Steps 1-5 of a ``forward-request``, before the policy is asked.

    Raises:
        EnvelopeError: ``forward_not_received`` (1), ``forward_not_allowed`` (2-4),
            ``unknown_recipient`` (5).
    """
    # 1. The caller was routed the bulletin (unknown and not-routed alike).
    if original is None or caller not in original.routed:
        raise EnvelopeError(NOT_RECEIVED, code="forward_not_received")
    row = original.row
    # 2. It is not the caller's own (an originator publishes to whom it wants).
    if row.originator == caller:
        raise EnvelopeError(
            "this is your own bulletin: publish it to them instead", code="forward_not_allowed"
        )
    # 3. It is an original: a forward is passed on only by asking its originator again.
    if row.forward_of is not None:
        raise EnvelopeError(
            "this bulletin is a forward: ask for the original to be forwarded to them",
            code="forward_not_allowed",
        )
    # 4. It still stands: not withdrawn, not expired.
    if original.withdrawn:
        raise EnvelopeError("its originator withdrew this bulletin", code="forward_not_allowed")
    if row.expires_at is not None and row.expires_at <= now:
        raise EnvelopeError("this bulletin has expired", code="forward_not_allowed")
    # 5. The new recipient is another agency of the directory that does not have it.
    if recipient not in records:
        raise EnvelopeError("the agency to forward to is not in the directory",
                            code="unknown_recipient")  # fmt: skip
    if recipient in (caller, row.originator) or recipient in original.routed:
        raise EnvelopeError(
            f"{recipient} has this bulletin already, or is its originator",
            code="forward_not_allowed",
        )


def check_grant(
    grant: ForwardGrant,
    *,
    caller: str,
    bulletin_id: str,
    forwarder: str,
    recipient: str,
    records: Mapping[str, AgencyRecord],
    now: int,
    max_skew_s: int,
) -> None:
    """Steps 1-4 of an originator's grant through ``forward-decide``.

    Raises:
        EnvelopeError: ``originator_mismatch`` (1), ``timestamp_out_of_window`` (4).
        SignatureError: ``key_not_current`` (2), ``signature_invalid`` (3).
    """
    # 1. It is the caller's grant, for exactly the request it answers.
    asked = (bulletin_id, caller, forwarder, recipient)
    if (grant.bulletin_id, grant.originator, grant.forwarder, grant.recipient) != asked:
        raise EnvelopeError(
            "the grant names another bulletin, originator, forwarder or recipient than the request",
            code="originator_mismatch",
        )
    # 2-3. Signed by a current signing key of the caller's.
    _verify(grant, records, current_only=True)
    # 4. Made now, not replayed from long ago.
    if abs(grant.issued_at - now) > max_skew_s:
        raise EnvelopeError(
            f"issued_at is outside the broker clock's {max_skew_s} s",
            code="timestamp_out_of_window",
        )


def check_forward(
    header: Header,
    *,
    sender: str,
    original: Original | None,
    records: Mapping[str, AgencyRecord],
    engine: Decider,
    now: int,
    cited_chunks: Mapping[tuple[int, int], StoredChunk] | None = None,
) -> ForwardVerdict:
    """Steps F1-F7 on an envelope whose header cites a bulletin it forwards.

    Args:
        header: the forward's signed header (``forward_of`` set).
        sender: the agency that published it (its originator, checked before).
        original: the cited bulletin as the registry holds it (None: never accepted).
        records: the directory, by agency id.
        engine: the policy in force.
        now: the relay's clock, epoch seconds.
        cited_chunks: what the attachment stream holds of the original, under its
            originator, by (attachment, chunk); read only when the citation names files.

    Raises:
        EnvelopeError: ``forward_not_received`` (F1), ``forward_citation_mismatch`` (F2),
            ``forward_not_allowed`` (F3, F4), ``forward_labels_weaker`` (F5),
            ``forward_consent_invalid`` (F6), ``forward_attachments_mismatch`` (F7).
        SignatureError: ``forward_consent_invalid`` (F6, the grant's signature).
        PolicyDenied: ``forward_not_consented`` (F6: no grant, and the policy does not let
            the sender forward it) or ``forward_denied`` (the policy refuses it even with
            the grant).
    """
    cite = header.forward_of
    if cite is None:
        raise ValueError("check_forward is for a forward (a header with forward_of)")
    # F1. The sender was routed the bulletin it forwards.
    if original is None or sender not in original.routed:
        raise EnvelopeError(NOT_RECEIVED, code="forward_not_received")
    row = original.row
    # F2. The citation names that bulletin as it was accepted: its originator, its digest.
    if cite.originator != row.originator or cite.envelope_digest != row.envelope_digest:
        raise EnvelopeError(
            "the citation does not match the bulletin you received (originator or envelope digest)",
            code="forward_citation_mismatch",
        )
    # F4 first: sealed for one recipient alone, by name (never a group's epoch, ADR 37).
    if len(header.recipients) != 1 or header.audience is not None:
        raise EnvelopeError("a forward is sealed for one recipient", code="forward_not_allowed")
    # F3. An original that still stands; one new recipient, neither sender nor originator.
    try:
        check_ask(
            caller=sender,
            recipient=header.recipients[0],
            original=original,
            records=records,
            now=now,
        )
    except EnvelopeError as exc:
        if exc.code == "unknown_recipient":
            raise
        raise EnvelopeError(str(exc), code="forward_not_allowed") from exc
    recipient = header.recipients[0]
    # F5. Labels no looser than the original's, and no longer valid.
    check_not_weaker(original.labels, header.labels, recipient=recipient)
    if row.expires_at is not None and (
        header.expires_at is None or header.expires_at > row.expires_at
    ):
        raise EnvelopeError(
            "the forward must expire when the original does, or before",
            code="forward_labels_weaker",
        )
    # F6. Consent: the originator's grant for exactly this forward, or the policy's.
    grant = cite.grant
    if grant is not None:
        forward = (cite.bulletin_id, cite.originator, sender, recipient)
        if (grant.bulletin_id, grant.originator, grant.forwarder, grant.recipient) != forward:
            raise EnvelopeError("the grant is for another forward", code="forward_consent_invalid")
        if grant.expires_at <= now:
            raise EnvelopeError(
                "the originator's grant has expired", code="forward_consent_invalid"
            )
        _verify(grant, records, current_only=False, code="forward_consent_invalid")
    facts = original_facts(original, records)
    decision = engine.decide_forward(facts, sender, recipient, now, consent=grant is not None)
    if not decision.allowed:
        why = ", ".join(decision.policy_ids) or "no grant matched"
        if grant is None:
            raise PolicyDenied(
                f"forwarding this needs its originator's consent ({why}): `istmo forward` asks "
                "for it",
                code="forward_not_consented",
            )
        raise PolicyDenied(f"the policy does not let {recipient} have it ({why})",
                           code="forward_denied")  # fmt: skip
    # F7. The files it passes on are the original's, all of them, as their originator
    # signed them: its recipient will fetch the original's chunks through it.
    check_cited(cite.attachments, cited_chunks or {})
    receive_facts = replace(
        facts,
        bulletin_id=header.bulletin_id,
        labels=header.labels,
        not_before=header.not_before,
        expires_at=header.expires_at,
    )
    return ForwardVerdict("originator" if grant else "policy", decision, receive_facts)


def _verify(
    grant: ForwardGrant,
    records: Mapping[str, AgencyRecord],
    *,
    current_only: bool,
    code: str | None = None,
) -> None:
    """The grant's signature, by a signing key of its originator's: not revoked at all
    (``current_only``), or not revoked when the grant was issued."""
    record = records.get(grant.originator)
    key = next((k for k in record.signing_keys if k.kid == grant.kid), None) if record else None
    revoked = key is not None and key.revoked_at is not None
    if key is None or (revoked and (current_only or key.revoked_at <= grant.issued_at)):  # type: ignore[operator]
        raise SignatureError(
            "the grant is not signed by a valid signing key of the originator",
            code=code or "key_not_current",
        )
    try:
        verify_grant(grant, key.verify_key())
    except (SignatureError, EnvelopeError) as exc:
        raise SignatureError(
            "the grant's signature does not verify", code=code or "signature_invalid"
        ) from exc
