"""Forwarding with consent as tables (ADR 20): the label rule and the grant
(``schemas.forwarding``), and the relay's checks on a request, a grant and a forward
envelope (``broker.relay.forwards``) with the real policy over the golden directory.
Real keys, no NATS, no database, no clock."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from broker.policy.engine import DirectorySnapshot, PolicyBundle, PolicyEngine
from broker.relay.attachment_checks import StoredChunk
from broker.relay.forwards import NOT_RECEIVED, Original, check_ask, check_forward, check_grant
from broker.store.registry import BulletinRow
from schemas.attachments import (
    MIN_CHUNK_BYTES,
    TAG_BYTES,
    AttachmentMeta,
    AttachmentRef,
    ChunkDigest,
)
from schemas.canonical import b64e, canonical_json
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.errors import EnvelopeError, IstmoError, PolicyDenied, SignatureError
from schemas.forwarding import (
    MAX_GRANT_S,
    Citation,
    check_not_weaker,
    forward_request_id,
    sign_grant,
    verify_grant,
)
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.labels import Classification, Handling, Labels, Tlp
from schemas.sealing import seal
from tests.core.envelope_kit import CONTENT, R1
from tests.core.test_policy_golden import POLICIES, T0, golden_directory

NOW = T0
BID = "0b1e5a8c-1111-4222-8333-444455556666"
GT, SV, BZ, JM = "gt-police", "sv-police", "bz-police", "jm-police"
KEYS = {a: SigningKey.generate() for a in (GT, SV, BZ, JM)}
GT_OLD = SigningKey.generate()
ORIGINAL = Labels(
    topic="drug-trafficking",
    classification=Classification.CONFIDENTIAL,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)
DIGEST = "ab" * 32


def _record(agency: str) -> AgencyRecord:
    keys = [(KEYS[agency], None)] + ([(GT_OLD, NOW - 3600)] if agency == GT else [])
    return AgencyRecord(
        id=agency, name=agency, state=agency[:2].upper(), communities=("SICA",),
        sector="police", status="active",
        signing_keys=tuple(
            SigningKeyRecord(kid=k.verify_key.kid, public=b64e(k.verify_key.public),
                             created_at=NOW - 86400, revoked_at=revoked)
            for k, revoked in keys
        ),
    )  # fmt: skip


RECORDS = {a: _record(a) for a in KEYS}


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    bundle = PolicyBundle.load(POLICIES)
    jurisdictions, agencies = golden_directory()
    return PolicyEngine(bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle))


def _original(labels: Labels = ORIGINAL, **changes: Any) -> Original:
    row = BulletinRow(
        id=BID, originator=GT, labels=canonical_json(labels.model_dump(mode="json")).decode(),
        envelope_digest=DIGEST, ingest_seq=1, created_at=NOW - 60, accepted_at=NOW - 60,
        recipients="sv-police", policy_version="p", directory_version="d",
    )  # fmt: skip
    routed = changes.pop("routed", frozenset({SV}))
    withdrawn = changes.pop("withdrawn", False)
    return Original(row.model_copy(update=changes), routed, withdrawn)


def _grant(**changes: Any) -> Any:
    fields: dict[str, Any] = {
        "bulletin_id": BulletinId(BID), "originator": AgencyId(GT), "forwarder": AgencyId(SV),
        "recipient": AgencyId(JM), "issued_at": NOW, "expires_at": NOW + 86400, "key": KEYS[GT],
    }  # fmt: skip
    fields.update(changes)
    return sign_grant(**fields)


# ---------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    ("change", "looser"),
    [
        ({}, None),
        ({"classification": Classification.SECRET}, None),
        ({"tlp": Tlp.RED}, None),
        # Without the directory a state is not known to lie inside a community: a forward
        # keeps the original's codes (or fewer of them).
        ({"rel_to": ("GT",)}, "rel_to"),
        ({"handling": (Handling.H2,)}, None),
        ({"named": (JM,)}, None),  # the new recipient may be named
        ({"precedence": "FLASH"}, None),
        ({"topic": "migration"}, "topic"),
        ({"classification": Classification.RESTRICTED}, "classification"),
        ({"tlp": Tlp.GREEN}, "tlp"),
        ({"rel_to": ("SICA", "CARICOM")}, "rel_to"),
        ({"source_grade": "A1"}, "source_grade"),
        ({"named": (BZ,)}, "named"),
        ({"judicial_consent": ("gt-justice",)}, "judicial_consent"),
    ],
)
def test_a_forward_keeps_or_tightens_the_labels(change: dict[str, Any], looser: str | None) -> None:
    forward = ORIGINAL.model_copy(update=change)
    if looser is None:
        check_not_weaker(ORIGINAL, forward, recipient=JM)
        return
    with pytest.raises(EnvelopeError, match=looser) as err:
        check_not_weaker(ORIGINAL, forward, recipient=JM)
    assert err.value.code == "forward_labels_weaker"


def test_handling_codes_and_their_note_travel_with_a_forward() -> None:
    h3 = ORIGINAL.model_copy(update={"handling": (Handling.H0, Handling.H3),
                                     "handling_note": "not for the press"})  # fmt: skip
    for dropped in ({"handling": (Handling.H3,)}, {"handling_note": "anything goes"}):
        with pytest.raises(EnvelopeError):
            check_not_weaker(h3, h3.model_copy(update=dropped), recipient=JM)


# ---------------------------------------------------------------------------- the grant
def test_a_grant_verifies_and_any_change_breaks_it() -> None:
    g = _grant()
    verify_grant(g, KEYS[GT].verify_key)
    for field, value in (("recipient", BZ), ("forwarder", BZ), ("expires_at", NOW + 9)):
        with pytest.raises(SignatureError):
            verify_grant(g.model_copy(update={field: value}), KEYS[GT].verify_key)
    with pytest.raises(SignatureError):
        verify_grant(g, KEYS[SV].verify_key)


@pytest.mark.parametrize(
    "change",
    [{"expires_at": NOW}, {"expires_at": NOW + MAX_GRANT_S + 1}, {"recipient": AgencyId(SV)}],
)
def test_a_grant_out_of_bounds_is_not_made(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _grant(**change)


def test_one_request_id_per_bulletin_forwarder_and_recipient() -> None:
    a = forward_request_id(BID, SV, JM)
    assert a == forward_request_id(BID, SV, JM)
    assert len({a, forward_request_id(BID, SV, BZ), forward_request_id(BID, BZ, JM)}) == 3


# ---------------------------------------------------------------------------- the request
@pytest.mark.parametrize(
    ("caller", "to", "original", "code"),
    [
        (SV, JM, _original(), None),
        (BZ, JM, _original(), "forward_not_received"),  # never routed it
        (SV, JM, None, "forward_not_received"),  # no such bulletin: the same answer
        (GT, JM, _original(routed=frozenset({GT, SV})), "forward_not_allowed"),  # its own
        (SV, JM, _original(forward_of=BID.replace("0b", "0c")), "forward_not_allowed"),
        (SV, JM, _original(withdrawn=True), "forward_not_allowed"),
        (SV, JM, _original(expires_at=NOW), "forward_not_allowed"),
        (SV, "zz-nobody", _original(), "unknown_recipient"),
        (SV, GT, _original(), "forward_not_allowed"),  # to the originator
        (SV, JM, _original(routed=frozenset({SV, JM})), "forward_not_allowed"),  # has it
    ],
)
def test_the_checks_on_a_request(
    caller: str, to: str, original: Original | None, code: str | None
) -> None:
    if code is None:
        check_ask(caller=caller, recipient=to, original=original, records=RECORDS, now=NOW)
        return
    with pytest.raises(EnvelopeError) as err:
        check_ask(caller=caller, recipient=to, original=original, records=RECORDS, now=NOW)
    assert err.value.code == code
    if code == "forward_not_received":
        assert str(err.value) == NOT_RECEIVED


@pytest.mark.parametrize(
    ("caller", "grant", "code"),
    [
        (GT, _grant(), None),
        (SV, _grant(), "originator_mismatch"),  # a grant by a non-originator
        (GT, _grant(recipient=AgencyId(BZ)), "originator_mismatch"),
        (GT, _grant(key=GT_OLD), "key_not_current"),
        (GT, _grant().model_copy(update={"expires_at": NOW + 7}), "signature_invalid"),
        (GT, _grant(issued_at=NOW - 3600, expires_at=NOW + 60), "timestamp_out_of_window"),
    ],
)
def test_the_checks_on_a_grant(caller: str, grant: Any, code: str | None) -> None:
    def check() -> None:
        check_grant(grant, caller=caller, bulletin_id=BID, forwarder=SV, recipient=JM,
                    records=RECORDS, now=NOW, max_skew_s=300)  # fmt: skip

    if code is None:
        check()
        return
    with pytest.raises(IstmoError) as err:
        check()
    assert err.value.code == code


# ---------------------------------------------------------------------------- the forward
def _forward(*, labels: Labels | None = None, to: str = JM, grant: Any = None, **cite: Any) -> Any:
    files = cite.get("files")
    citation = Citation(bulletin_id=BID, originator=cite.get("originator", GT),
                        envelope_digest=cite.get("digest", DIGEST), grant=grant,
                        attachments=files)  # fmt: skip
    if labels is None:
        labels = ORIGINAL.model_copy(update={"named": (to,)}) if grant else ORIGINAL
    metas = tuple(
        AttachmentMeta(name=f"f{i}", key=b64e(bytes(32))) for i in range(len(files or ()))
    )
    return seal(
        content=CONTENT.model_copy(update={"attachments": metas or None}), labels=labels,
        originator=AgencyId(SV), signing_key=KEYS[SV],
        recipients={AgencyId(to): R1.pub("X25519")}, now=NOW, forward_of=citation,
    ).header  # fmt: skip


def _original_files(n: int) -> tuple[tuple[AttachmentRef, ...], dict[tuple[int, int], StoredChunk]]:
    """``n`` files of the original as stored (two chunks each) and their references."""
    refs, chunks = [], {}
    for i in range(n):
        digest = ChunkDigest(i, 2)
        for j, size in enumerate((MIN_CHUNK_BYTES + TAG_BYTES, 100 + TAG_BYTES)):
            sha = hashlib.sha256(f"{i}.{j}".encode()).digest()
            chunks[(i, j)] = StoredChunk(size, sha)
            digest.add(sha)
        refs.append(AttachmentRef(size=MIN_CHUNK_BYTES + 100, chunk_size=MIN_CHUNK_BYTES,
                                  chunks=2, digest=digest.hexdigest()))  # fmt: skip
    return tuple(refs), chunks


REFS, STORED = _original_files(2)


@pytest.mark.parametrize(
    ("name", "header", "sender", "original", "code"),
    [
        ("consented", lambda: _forward(grant=_grant()), SV, _original(), None),
        ("no consent", lambda: _forward(), SV, _original(), "forward_not_consented"),
        ("never received", lambda: _forward(grant=_grant()), SV, _original(routed=frozenset()),
         "forward_not_received"),
        ("tampered digest", lambda: _forward(grant=_grant(), digest="cd" * 32), SV, _original(),
         "forward_citation_mismatch"),
        ("tampered originator", lambda: _forward(grant=_grant(), originator=BZ), SV,
         _original(), "forward_citation_mismatch"),
        ("grant for another", lambda: _forward(grant=_grant(recipient=AgencyId(BZ))), SV,
         _original(), "forward_consent_invalid"),
        ("grant expired", lambda: _forward(grant=_grant(issued_at=NOW - 99, expires_at=NOW)),
         SV, _original(), "forward_consent_invalid"),
        ("grant forged", lambda: _forward(grant=_grant(key=KEYS[SV])), SV, _original(),
         "forward_consent_invalid"),
        ("looser labels", lambda: _forward(grant=_grant(), labels=ORIGINAL.model_copy(
            update={"tlp": Tlp.GREEN, "named": (JM,)})), SV, _original(), "forward_labels_weaker"),
        ("policy path, GREEN", lambda: _forward(to=BZ, labels=ORIGINAL.model_copy(
            update={"tlp": Tlp.GREEN})), SV, _original(ORIGINAL.model_copy(
                update={"tlp": Tlp.GREEN})), None),
        ("H2 needs the grant", lambda: _forward(to=BZ, labels=ORIGINAL.model_copy(
            update={"tlp": Tlp.GREEN, "handling": (Handling.H2,)})), SV, _original(
                ORIGINAL.model_copy(update={"tlp": Tlp.GREEN, "handling": (Handling.H2,)})),
         "forward_not_consented"),
        ("consented, with the files", lambda: _forward(grant=_grant(), files=REFS), SV,
         _original(), None),
        ("consented, a file not the original's", lambda: _forward(
            grant=_grant(), files=(REFS[1], REFS[0])), SV, _original(),
         "forward_attachments_mismatch"),
        ("consented, a file left out", lambda: _forward(grant=_grant(), files=REFS[:1]), SV,
         _original(), "forward_attachments_mismatch"),
        ("consented, text alone, the files left behind", lambda: _forward(grant=_grant()), SV,
         _original(), "forward_attachments_mismatch"),
    ],
)  # fmt: skip
def test_the_checks_on_a_forward(
    engine: PolicyEngine, name: str, header: Any, sender: str, original: Original, code: str
) -> None:
    def check() -> Any:
        return check_forward(header(), sender=sender, original=original, records=RECORDS,
                             engine=engine, now=NOW,
                             cited_chunks=STORED if "file" in name else {})  # fmt: skip

    if code is None:
        verdict = check()
        assert verdict.consent == ("originator" if "consent" in name else "policy")
        assert verdict.receive_facts.originator == GT  # decided as the original was
        return
    with pytest.raises((EnvelopeError, SignatureError, PolicyDenied)) as err:
        check()
    assert err.value.code == code, name
