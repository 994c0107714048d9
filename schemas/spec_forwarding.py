"""Forwarding with consent in the spec's test vectors (ADR 20): the originator's grant, the
citation a forward carries, the recipient's check of both, and the three operations of
the agency API.

The story: ``rc-drugs`` received ``gt-police``'s bulletin (case ``two-suites`` of
``envelopes.json``, marked H2), asks to pass it on to ``cr-police``, ``gt-police`` grants
it, and ``rc-drugs`` forwards it (case ``forward``). Grants are Ed25519 over fixed fields,
so everything here is deterministic; the forward envelopes themselves are sealed once and
kept by ``schemas.spec_envelopes``, which takes its citations from here. Files are
written by ``schemas.spec_vectors``.

``recipient_check`` spells out what a recipient checks of a forward's consent, as
docs/spec/forwarding.md writes it (the SDK's own check is ``clients.opening``, which this
package may not import; ``tests/core/test_spec_vectors.py`` holds the two together).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from schemas.agency import ErrorReply, encode_reply, encode_request
from schemas.canonical import canonical_json
from schemas.envelope import Header
from schemas.errors import EnvelopeError, IstmoError, SignatureError
from schemas.forwarding import (
    Citation,
    ForwardAnswer,
    ForwardAsk,
    ForwardDecision,
    ForwardGrant,
    ForwardRequestEntry,
    ForwardRequestsReply,
    ForwardRequestsRequest,
    forward_request_id,
    sign_grant,
    verify_grant,
)
from schemas.ids import AgencyId, BulletinId
from schemas.keys import VerifyKey
from schemas.selfsigned import signing_input
from schemas.spec_keys import AGENCIES, NOW, hex_of, signing_key, text_of

__all__ = [
    "FORWARDED_AT",
    "FORWARDER",
    "FORWARD_FAILURES",
    "ORIGINAL_CASE",
    "RECIPIENT",
    "citation",
    "forward_exchanges",
    "forwarding_doc",
    "recipient_check",
    "spoilt_citation",
]

ORIGINAL_CASE = "two-suites"  # the bulletin forwarded, as envelopes.json holds it
ORIGINATOR = "gt-police"
FORWARDER = "rc-drugs"  # routed the original
RECIPIENT = "cr-police"  # did not get it
REFUSED_TO = "hn-police"  # asked for too, and refused by the originator
REQUESTED_AT = NOW + 60
GRANTED_AT = NOW + 120
GRANT_S = 86400
FORWARDED_AT = NOW + 180  # the forward's created_at; the original is withdrawn at NOW + 600
REASON = "Costa Rica tracks the same boats"
REFUSAL = "not outside the SICA drugs desk"
# Forwards a recipient must refuse: one change each to the genuine grant. The envelopes
# are in envelopes.json's failures, under these reasons.
FORWARD_FAILURES = (
    "a forward whose grant was changed after the originator signed it (a later expiry)",
    "a forward whose grant the originator signed for another recipient",
    "a forward whose grant the forwarder signed, not the originator",
)
_FAILS = "forward_consent_invalid"


def _grant(*, recipient: str = RECIPIENT, signer: str = ORIGINATOR, bid: str) -> ForwardGrant:
    return sign_grant(
        bulletin_id=BulletinId(bid),
        originator=AgencyId(ORIGINATOR),
        forwarder=AgencyId(FORWARDER),
        recipient=AgencyId(recipient),
        issued_at=GRANTED_AT,
        expires_at=GRANTED_AT + GRANT_S,
        key=signing_key(signer),
    )


def _bulletin_id(original: dict[str, Any]) -> str:
    return str(json.loads(original["header_canonical"])["bulletin_id"])


def citation(original: dict[str, Any], grant: ForwardGrant | None = None) -> Citation:
    """What the forward case cites: ``original`` (its entry in envelopes.json) and the
    originator's grant (or ``grant`` instead)."""
    bid = _bulletin_id(original)
    return Citation(
        bulletin_id=bid,
        originator=ORIGINATOR,
        envelope_digest=original["envelope_sha256"],
        grant=grant or _grant(bid=bid),
    )


def spoilt_citation(original: dict[str, Any], why: str) -> Citation:
    """The citation of the failure ``why`` (one of ``FORWARD_FAILURES``)."""
    bid = _bulletin_id(original)
    later = _grant(bid=bid).model_copy(update={"expires_at": GRANTED_AT + 2 * GRANT_S})
    spoilt = {
        FORWARD_FAILURES[0]: later,  # the signature no longer covers it
        FORWARD_FAILURES[1]: _grant(recipient=REFUSED_TO, bid=bid),
        FORWARD_FAILURES[2]: _grant(signer=FORWARDER, bid=bid),
    }[why]
    return citation(original, spoilt)


def vector_key(agency: str, kid: str) -> VerifyKey | None:
    """The signing key ``kid`` of ``agency`` as the vectors' directory lists it."""
    if agency not in AGENCIES:
        return None
    key = signing_key(agency).verify_key
    return key if key.kid == kid else None


def recipient_check(
    header: Header, agency: str, key_of: Callable[[str, str], VerifyKey | None] = vector_key
) -> str:
    """How consent to the forward ``header`` was given, as ``agency`` (its one recipient)
    checks it: ``originator`` (a grant that checks out) or ``policy`` (no grant: the relay
    checked the policy's consent).

    Raises:
        SignatureError: ``forward_consent_invalid``.
        ValueError: ``header`` is not a forward.
    """
    cite = header.forward_of
    if cite is None:
        raise ValueError("not a forward")
    grant = cite.grant
    if grant is None:
        return "policy"
    # 1. The grant names this very forward: the bulletin cited, its originator, the
    #    forward's signer as forwarder, and the agency checking it as recipient.
    named = (grant.bulletin_id, grant.originator, grant.forwarder, grant.recipient)
    if named != (cite.bulletin_id, cite.originator, header.originator, agency):
        raise SignatureError("the grant is for another forward", code=_FAILS)
    # 2. The directory lists kid as a signing key of the originator (revocation: the
    #    vectors' keys are never revoked).
    key = key_of(grant.originator, grant.kid)
    if key is None:
        raise SignatureError("the grant is not signed by a key of the originator's", code=_FAILS)
    # 3. The signature verifies over the grant's signing input.
    try:
        verify_grant(grant, key)
    except (SignatureError, EnvelopeError) as exc:
        raise SignatureError("the grant's signature does not verify", code=_FAILS) from exc
    return "originator"


def _request_id_input(bid: str, forwarder: str, recipient: str) -> bytes:
    return b"istmo/v1/forward-request\x00" + f"{bid}\x00{forwarder}\x00{recipient}".encode()


def forwarding_doc(envelopes: dict[str, Any]) -> dict[str, Any]:
    """forwarding.json: the grant, its signing input and signature, the citation, the
    request id, and grants a recipient refuses."""
    cases = {c["name"]: c for c in envelopes["cases"]}
    original, forward = cases[ORIGINAL_CASE], cases["forward"]
    grant = _grant(bid=_bulletin_id(original))
    cite = citation(original, grant)
    header = Header.model_validate_json(forward["header_canonical"], strict=True)
    if header.forward_of != cite:
        raise ValueError("the forward case cites another bulletin or grant")
    consent = recipient_check(header, RECIPIENT)
    request_input = _request_id_input(cite.bulletin_id, FORWARDER, RECIPIENT)
    request_id = "fwd-" + hashlib.sha256(request_input).hexdigest()[:16]
    if request_id != forward_request_id(cite.bulletin_id, FORWARDER, RECIPIENT):
        raise AssertionError("the request id differs from the spec's")
    grant_input = b"istmo/v1/forward-grant\x00" + canonical_json(
        grant.model_dump(mode="json", exclude={"sig"})
    )
    if grant_input != signing_input("forward-grant", grant):
        raise AssertionError("the grant's signing input differs from the spec's")
    failures = []
    for why in FORWARD_FAILURES:
        bad = header.model_copy(update={"forward_of": spoilt_citation(original, why)})
        try:
            recipient_check(bad, RECIPIENT)
        except IstmoError as exc:
            failures.append(
                {
                    "why": why,
                    "forwarder": FORWARDER,
                    "open_as": RECIPIENT,
                    "citation": text_of(canonical_json(_cited(bad))),
                    "fails": exc.code,
                }
            )
            continue
        raise AssertionError(f"the failure vector '{why}' passed")
    return {
        "description": "Forwarding with consent (forwarding.md): envelopes.json case "
        "'forward' is rc-drugs passing case 'two-suites' of gt-police on to cr-police. The "
        "grant: gt-police's Ed25519 signature (deterministic) over signing_input; the "
        "citation as the forward's header carries it; the id of the request that asked for "
        "it. failures: citations whose grant a recipient refuses (the same grants are in "
        "envelopes.json failures, sealed in forwards).",
        "original_case": ORIGINAL_CASE,
        "forward_case": forward["name"],
        "original": {
            "bulletin_id": cite.bulletin_id,
            "originator": cite.originator,
            "envelope_sha256": original["envelope_sha256"],
        },
        "forwarder": FORWARDER,
        "recipient": RECIPIENT,
        "request_id_input_hex": hex_of(request_input),
        "request_id": request_id,
        "grant": {
            "signer": ORIGINATOR,
            "domain": "forward-grant",
            "signing_input": text_of(grant_input),
            "message": text_of(canonical_json(grant.model_dump(mode="json"))),
        },
        "citation": text_of(canonical_json(cite.model_dump(mode="json", exclude_none=True))),
        "consent": consent,
        "failures": failures,
    }


def _cited(header: Header) -> Any:
    if header.forward_of is None:
        raise ValueError("not a forward")
    return header.forward_of.model_dump(mode="json", exclude_none=True)


def forward_exchanges(envelopes: dict[str, Any]) -> list[tuple[str, str, bytes, bytes]]:
    """(caller, op, request, reply) of the forward-request, forward-requests and
    forward-decide operations of the story, and refusals."""
    original = next(c for c in envelopes["cases"] if c["name"] == ORIGINAL_CASE)
    bid = _bulletin_id(original)
    grant = _grant(bid=bid)
    rid = forward_request_id(bid, FORWARDER, RECIPIENT)
    rid_refused = forward_request_id(bid, FORWARDER, REFUSED_TO)

    def answer(request_id: str, to: str, state: Any, **more: Any) -> bytes:
        return encode_reply(
            ForwardAnswer(request_id=request_id, bulletin_id=bid, forwarder=FORWARDER,
                          recipient=to, state=state, **more)
        )  # fmt: skip

    def entry(request_id: str, to: str, reason: str, state: Any, at: int) -> ForwardRequestEntry:
        return ForwardRequestEntry(
            request_id=request_id,
            bulletin_id=bid,
            forwarder=FORWARDER,
            recipient=to,
            reason=reason,
            requested_at=at,
            state=state,
        )

    ask = encode_request(ForwardAsk(bulletin_id=bid, to=RECIPIENT, reason=REASON))
    ask_refused = encode_request(ForwardAsk(bulletin_id=bid, to=REFUSED_TO, reason=REASON))
    grant_it = encode_request(ForwardDecision(request_id=rid, grant=grant))
    refuse_it = encode_request(ForwardDecision(request_id=rid_refused, refusal=REFUSAL))
    not_received = (
        "no bulletin with this id was routed to you: you can forward only what you received"
    )
    return [
        (FORWARDER, "forward-request", ask, answer(rid, RECIPIENT, "pending")),
        (FORWARDER, "forward-request", ask_refused, answer(rid_refused, REFUSED_TO, "pending")),
        (
            ORIGINATOR,
            "forward-requests",
            encode_request(ForwardRequestsRequest()),
            encode_reply(
                ForwardRequestsReply(
                    requests=(
                        entry(rid, RECIPIENT, REASON, "pending", REQUESTED_AT),
                        entry(rid_refused, REFUSED_TO, REASON, "pending", REQUESTED_AT + 5),
                    )
                )
            ),
        ),
        (ORIGINATOR, "forward-decide", grant_it, answer(rid, RECIPIENT, "granted", grant=grant)),
        (
            ORIGINATOR,
            "forward-decide",
            refuse_it,
            answer(rid_refused, REFUSED_TO, "refused", refusal=REFUSAL),
        ),
        # Asking again finds the request, answered: the forwarder forwards with the grant.
        (FORWARDER, "forward-request", ask, answer(rid, RECIPIENT, "granted", grant=grant)),
        (
            ORIGINATOR,
            "forward-requests",
            encode_request(ForwardRequestsRequest(all=True)),
            encode_reply(
                ForwardRequestsReply(
                    requests=(
                        entry(rid, RECIPIENT, REASON, "granted", REQUESTED_AT),
                        entry(rid_refused, REFUSED_TO, REASON, "refused", REQUESTED_AT + 5),
                    )
                )
            ),
        ),
        # Refusals: each is audited (request.rejected, naming the bulletin).
        (
            "hn-police",
            "forward-request",
            encode_request(ForwardAsk(bulletin_id=bid, to=RECIPIENT)),
            encode_reply(ErrorReply.of("forward_not_received", not_received)),
        ),
        (
            FORWARDER,
            "forward-request",
            encode_request(ForwardAsk(bulletin_id=bid, to="sv-police")),
            encode_reply(
                ErrorReply.of(
                    "forward_not_allowed",
                    "sv-police has this bulletin already, or is its originator",
                )
            ),
        ),
        (
            FORWARDER,
            "forward-request",
            encode_request(ForwardAsk(bulletin_id=bid, to="auditor")),
            encode_reply(
                ErrorReply.of(
                    "forward_denied",
                    "the policy does not let auditor have this bulletin, even with its "
                    "originator's consent (guard.auditor-no-content)",
                )
            ),
        ),
        (
            ORIGINATOR,
            "forward-decide",
            encode_request(ForwardDecision(request_id=rid, refusal=REFUSAL)),
            encode_reply(ErrorReply.of("forward_decided", "this request was granted already")),
        ),
        (
            FORWARDER,
            "forward-decide",
            grant_it,
            encode_reply(
                ErrorReply.of("not_found", "no request to forward a bulletin of yours has this id")
            ),
        ),
    ]
