"""Envelope v1: seal/parse/open, and every hostile input we can build against it.

Catalogue items: B-05..B-07, B-09, B-11..B-15, B-19..B-25, S-09..S-11. Malicious envelopes are
built with the private pieces of ``schemas.sealing`` (what an attacker who knows the format
would write), after a sanity test shows that the same pieces build an honest envelope.
Receipts, directory excerpts and keys have files of their own; what they share with these
tests (agencies, labels, ``BASE``, field mutators) is in ``envelope_kit.py``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.canonical import b64e, canonical_json
from schemas.envelope import Envelope, Header, InnerBulletin, SealedBody, Signature, Wrap
from schemas.errors import DecryptionError, EnvelopeError, SignatureError
from schemas.ids import BulletinId, parse_agency_id
from schemas.keys import KEMS, EncryptionKey, KemName, hpke_suite
from schemas.labels import Handling, Precedence
from schemas.sealing import (
    _commitment,
    _signed_bytes,
    _wrap_info,
    check_envelope_shape,
    encode_envelope,
    envelope_digest,
    header_digest,
    open_envelope,
    parse_envelope,
    seal,
    verify_envelope,
)
from schemas.subjects import deliver_subject, ingest_subject, receipt_subject
from tests.core.envelope_kit import (
    BASE,
    CONTENT,
    LABELS,
    NOW,
    R1,
    R2,
    R3,
    A,
    Agency,
    C,
    FieldPath,
    M,
    as_json,
    drop,
    put,
    seal_for,
)

UNIFORM = "bulletin does not open"
_L = 2**252 + 27742317777372353535851937790883648493  # order of the Ed25519 base point


def _open(env: Envelope, who: Agency, kem: KemName, *, sender: Agency = A) -> InnerBulletin:
    return open_envelope(env, recipient=who.id, key=who.enc[kem], sender_key=sender.verify_key)


# --- building blocks for malicious envelopes -----------------------------------------------


def _header(
    *,
    originator: Agency,
    recipients: Sequence[Agency],
    key: bytes,
    signer: Agency | None = None,
    bulletin_id: str = "0f8c7b52-3c1d-4e2a-9b7f-1a2b3c4d5e6f",
) -> Header:
    return Header(
        v=1,
        bulletin_id=bulletin_id,
        originator=originator.id,
        created_at=NOW,
        labels=LABELS,
        recipients=tuple(sorted(r.id for r in recipients)),
        aead="AES-256-GCM",
        key_commitment=b64e(_commitment(key)),
        signer=(signer or originator).verify_key.kid,
    )


def _inner(header: Header, **overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "bulletin_id": header.bulletin_id,
        "originator": header.originator,
        "recipients": header.recipients,
        "content": CONTENT,
    }
    fields.update(overrides)
    return canonical_json(InnerBulletin(**fields).model_dump(mode="json"))


def _body(key: bytes, plaintext: bytes, aad: bytes) -> SealedBody:
    nonce = os.urandom(12)
    return SealedBody(nonce=b64e(nonce), ct=b64e(AESGCM(key).encrypt(nonce, plaintext, aad)))


def _wrap(who: Agency, kem: KemName, key: bytes, hd: bytes) -> Wrap:
    pub = who.pub(kem)
    enc = hpke_suite(kem).encrypt(key, pub.hpke_public(), info=_wrap_info(hd, who.id, pub.kid))
    return Wrap(recipient=who.id, kid=pub.kid, kem=kem, enc=b64e(enc))


def _signed(header: Header, body: SealedBody, wraps: Sequence[Wrap], by: Agency) -> Envelope:
    wrap_tuple = tuple(sorted(wraps, key=lambda w: w.recipient))
    value = by.sign.sign(_signed_bytes(header, body, wrap_tuple))
    return Envelope(
        v=1,
        header=header,
        body=body,
        wraps=wrap_tuple,
        sig=Signature(alg="Ed25519", kid=header.signer, value=b64e(value)),
    )


def _build(
    kem: KemName,
    *,
    originator: Agency,
    recipients: Sequence[Agency],
    key: bytes | None = None,
    signer: Agency | None = None,
) -> Envelope:
    """An honest envelope from the building blocks (the malicious ones start from this)."""
    key = key or os.urandom(32)
    header = _header(originator=originator, recipients=recipients, key=key, signer=signer)
    hd = header_digest(header)
    body = _body(key, _inner(header), hd)
    return _signed(header, body, [_wrap(r, kem, key, hd) for r in recipients], signer or originator)


def _flip(b64: str, index: int = 0, bit: int = 0) -> str:
    data = bytearray(base64.b64decode(b64))
    data[index] ^= 1 << bit
    return b64e(bytes(data))


def _as_dict(env: Envelope) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(encode_envelope(env))
    return value


def _mutated(env: Envelope, mutate: Callable[[dict[str, Any]], None]) -> Envelope:
    d = _as_dict(env)
    mutate(d)
    return parse_envelope(as_json(d))


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("kem", KEMS)
@pytest.mark.parametrize(
    "recipients",
    [(R1,), (R1, R2), (R1, R2, R3, C)],
    ids=["1-recipient", "2-recipients", "4-recipients"],
)
def test_seal_parse_open_round_trip(kem: KemName, recipients: tuple[Agency, ...]) -> None:
    env = seal_for(kem, recipients)
    raw = encode_envelope(env)
    parsed = parse_envelope(raw)
    assert parsed == env
    assert encode_envelope(parsed) == raw
    assert envelope_digest(parsed) == envelope_digest(env)
    check_envelope_shape(parsed)
    verify_envelope(parsed, A.verify_key)
    assert parsed.header.recipients == tuple(sorted(r.id for r in recipients))
    assert [w.recipient for w in parsed.wraps] == list(parsed.header.recipients)
    assert {w.kem for w in parsed.wraps} == {kem}
    for who in recipients:
        inner = _open(parsed, who, kem)
        assert inner.content == CONTENT
        assert inner.bulletin_id == env.header.bulletin_id
        assert inner.originator == A.id
        assert inner.recipients == env.header.recipients


def test_recipients_may_use_different_kems() -> None:
    env = seal(
        content=CONTENT,
        labels=LABELS,
        originator=A.id,
        signing_key=A.sign,
        recipients={R1.id: R1.pub("MLKEM768-X25519"), R2.id: R2.pub("X25519")},
        now=NOW,
    )
    env = parse_envelope(encode_envelope(env))
    check_envelope_shape(env)
    assert _open(env, R1, "MLKEM768-X25519").content == CONTENT
    assert _open(env, R2, "X25519").content == CONTENT


def test_optional_header_fields_round_trip() -> None:
    labels = LABELS.model_copy(update={"handling": (Handling.H3,), "handling_note": "Sólo PA"})
    env = seal(
        content=CONTENT,
        labels=labels,
        originator=A.id,
        signing_key=A.sign,
        recipients={R1.id: R1.pub("X25519")},
        now=NOW,
        not_before=NOW + 60,
        expires_at=NOW + 3600,
        bulletin_id=BulletinId("0f8c7b52-3c1d-4e2a-9b7f-1a2b3c4d5e6f"),
    )
    parsed = parse_envelope(encode_envelope(env))
    assert parsed == env
    assert parsed.header.bulletin_id == "0f8c7b52-3c1d-4e2a-9b7f-1a2b3c4d5e6f"
    assert parsed.header.labels.handling_note == "Sólo PA"
    assert _open(parsed, R1, "X25519").content == CONTENT


def test_each_seal_has_fresh_id_key_and_nonce() -> None:
    one, two = seal_for("X25519"), seal_for("X25519")
    assert one.header.bulletin_id != two.header.bulletin_id
    assert one.header.key_commitment != two.header.key_commitment
    assert one.body.nonce != two.body.nonce


def test_seal_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        seal_for("X25519", ())


@pytest.mark.parametrize("kem", KEMS)
def test_building_blocks_make_an_honest_envelope(kem: KemName) -> None:
    # The malicious constructions below start from these pieces: they must be faithful.
    env = parse_envelope(encode_envelope(_build(kem, originator=A, recipients=(R1, R2))))
    check_envelope_shape(env)
    assert _open(env, R1, kem).content == CONTENT
    assert _open(env, R2, kem).content == CONTENT


# --- hostile parse table (B-01, B-03..B-07, B-09, B-19) -------------------------------------

BASE_DICT = _as_dict(BASE)


def _rename_recipient(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    """Rename a recipient in the header and its wrap together, so only the id is at fault."""

    def mutate(d: dict[str, Any]) -> None:
        d["header"]["recipients"] = [new if r == old else r for r in d["header"]["recipients"]]
        for w in d["wraps"]:
            if w["recipient"] == old:
                w["recipient"] = new

    return mutate


def _extra_wrap(d: dict[str, Any]) -> None:
    # B-19: a wrap for C, who is not in the signed recipients (appended after the sorted ones).
    extra = dict(d["wraps"][0], recipient=C.id)
    d["wraps"].append(extra)


def _swap_wraps(d: dict[str, Any]) -> None:
    d["wraps"].reverse()


def _unsorted_recipients(d: dict[str, Any]) -> None:
    d["header"]["recipients"].reverse()
    d["wraps"].reverse()


def _duplicate_recipient(d: dict[str, Any]) -> None:
    d["header"]["recipients"].append(d["header"]["recipients"][-1])
    d["wraps"].append(d["wraps"][-1])


_BAD_AGENCY_IDS = [
    pytest.param("POLICIA-PA", id="B-06-upper-case"),
    pytest.param("Policia-pa", id="B-06-capital"),
    pytest.param("polici\u0430-pa", id="B-06-cyrillic-a"),
    pytest.param("\u0440\u043elicia-pa", id="B-06-cyrillic-r-o"),
    pytest.param("policia-\u2ca3a", id="B-06-coptic-r"),
    pytest.param("policia-pa\u200b", id="B-06-zero-width-space"),
    pytest.param("policía-pa", id="B-06-accent"),
    pytest.param("policia.pa", id="B-07-dot"),
    pytest.param("policia-*", id="B-07-star"),
    pytest.param("policia->", id="B-07-gt"),
    pytest.param("policia pa", id="B-07-space"),
    pytest.param("$policia", id="B-07-dollar"),
    pytest.param("policia\tpa", id="B-07-tab"),
    pytest.param("policia-pa\n", id="trailing-newline"),
    pytest.param("policia\x00pa", id="B-04-nul"),
    pytest.param("policia_pa", id="underscore"),
    pytest.param("-policia", id="leading-dash"),
    pytest.param("policia-", id="trailing-dash"),
    pytest.param("pa", id="too-short"),
    pytest.param("a" * 33, id="too-long"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("bad", _BAD_AGENCY_IDS)
@pytest.mark.parametrize("where", ["originator", "recipient"])
def test_hostile_agency_ids_are_malformed(bad: str, where: str) -> None:
    mutate = (
        put(("header", "originator"), bad)
        if where == "originator"
        else _rename_recipient(R2.id, bad)
    )
    d = json.loads(encode_envelope(BASE))
    mutate(d)
    with pytest.raises(EnvelopeError) as exc_info:
        parse_envelope(as_json(d))
    assert type(exc_info.value) is EnvelopeError
    assert exc_info.value.code == "malformed"
    assert f"header.{'originator' if where == 'originator' else 'recipients'}" in str(
        exc_info.value
    )
    if len(bad) > 3:
        assert bad not in str(exc_info.value)  # messages never echo the input


@pytest.mark.parametrize("bad", _BAD_AGENCY_IDS)
def test_hostile_agency_ids_never_become_subjects(bad: str) -> None:
    # B-07: subjects are built only from ids that pass parse_agency_id.
    def deliver_routine(agency: str) -> str:
        return deliver_subject(agency, Precedence.ROUTINE)

    for build in (ingest_subject, deliver_routine, receipt_subject, parse_agency_id):
        with pytest.raises(EnvelopeError) as exc_info:
            build(bad)
        assert exc_info.value.code == "bad_agency_id"


_TOO_BIG = [2**40 + 1, 2**53, 2**63 - 1, 2**63, 2**64, 2**64 + 1]

HOSTILE_PARSE: list[Any] = [
    # B-05: versions and missing fields.
    pytest.param(put(("v",), 2), "unsupported_version", "envelope v", id="B-05-v2"),
    pytest.param(put(("v",), 0), "unsupported_version", "envelope v", id="B-05-v0"),
    pytest.param(put(("v",), "1"), "unsupported_version", "envelope v", id="B-05-v-string"),
    pytest.param(put(("header", "v"), 2), "unsupported_version", "header.v", id="B-05-header-v2"),
    pytest.param(drop(("v",)), "malformed", "envelope v", id="B-05-missing-v"),
    pytest.param(drop(("header", "bulletin_id")), "malformed", "bulletin_id", id="missing-id"),
    pytest.param(drop(("header", "key_commitment")), "malformed", "key_commitment", id="no-kc"),
    pytest.param(drop(("header", "signer")), "malformed", "header.signer", id="missing-signer"),
    pytest.param(drop(("body",)), "malformed", "body", id="missing-body"),
    pytest.param(drop(("body", "ct")), "malformed", "body.ct", id="missing-ct"),
    pytest.param(drop(("sig",)), "malformed", "sig", id="missing-sig"),
    pytest.param(drop(("sig", "value")), "malformed", "sig.value", id="missing-sig-value"),
    pytest.param(put(("wraps",), []), "malformed", "wraps", id="no-wraps"),
    pytest.param(put(("header", "recipients"), []), "malformed", "recipients", id="no-recips"),
    pytest.param(put(("extra",), 1), "malformed", "extra", id="unknown-top-field"),
    pytest.param(put(("header", "sender"), "policia-pa"), "malformed", "sender", id="extra-hdr"),
    # B-18: a suite outside the allowlist, including "none".
    pytest.param(
        put(("header", "aead"), "none"), "unsupported_suite", "header.aead", id="B-18-aead-none"
    ),
    pytest.param(put(("sig", "alg"), "none"), "unsupported_suite", "sig.alg", id="B-18-alg-none"),
    pytest.param(put(("sig", "alg"), "Ed448"), "unsupported_suite", "sig.alg", id="B-18-alg-other"),
    pytest.param(put(("wraps", 0, "kem"), "P256"), "unsupported_suite", "kem", id="B-18-kem"),
    # Unknown label values.
    pytest.param(put(("header", "labels", "topic"), "cyber"), "unknown_label", "topic", id="topic"),
    pytest.param(
        put(("header", "labels", "classification"), "TOP SECRET"),
        "unknown_label",
        "classification",
        id="classification",
    ),
    pytest.param(
        put(("header", "labels", "classification"), "secret"),
        "unknown_label",
        "classification",
        id="classification-lower-case",
    ),
    pytest.param(put(("header", "labels", "tlp"), "WHITE"), "unknown_label", "tlp", id="tlp-1.0"),
    pytest.param(
        put(("header", "labels", "handling"), ["H4"]), "unknown_label", "handling", id="handling"
    ),
    pytest.param(
        put(("header", "labels", "handling"), ["H1", "H1"]),
        "unknown_label",
        "handling",
        id="handling-repeated",
    ),
    pytest.param(
        put(("header", "labels", "precedence"), "URGENT"),
        "unknown_label",
        "precedence",
        id="precedence",
    ),
    pytest.param(
        put(("header", "labels", "rel_to"), ["pa"]), "unknown_label", "rel_to", id="rel-to-lower"
    ),
    pytest.param(put(("header", "labels", "rel_to"), []), "unknown_label", "rel_to", id="rel-0"),
    pytest.param(
        put(("header", "labels", "source_grade"), "G7"),
        "unknown_label",
        "source_grade",
        id="source-grade",
    ),
    pytest.param(
        put(("header", "labels", "caveat"), "NOFORN"), "unknown_label", "caveat", id="new-label"
    ),
    # B-09: integers out of range, negative, or not integers.
    *[
        pytest.param(
            put(("header", "created_at"), n), "malformed", "created_at", id=f"B-09-created-{n}"
        )
        for n in _TOO_BIG
    ],
    pytest.param(put(("header", "created_at"), -1), "malformed", "created_at", id="B-09-neg"),
    pytest.param(
        put(("header", "created_at"), -(2**63)), "malformed", "created_at", id="B-09-neg-2^63"
    ),
    pytest.param(
        put(("header", "expires_at"), 2**63), "malformed", "expires_at", id="B-09-expires-2^63"
    ),
    pytest.param(
        put(("header", "not_before"), -5), "malformed", "not_before", id="B-09-not-before-neg"
    ),
    pytest.param(
        put(("header", "created_at"), str(NOW)), "malformed", "created_at", id="created-str"
    ),
    pytest.param(put(("header", "created_at"), True), "malformed", "created_at", id="created-t"),
    pytest.param(
        put(("header", "expires_at"), NOW - 1), "malformed", "header", id="expires-before-created"
    ),
    # Ids and binary fields of the wrong shape.
    pytest.param(
        put(("header", "bulletin_id"), "0F8C7B52-3C1D-4E2A-9B7F-1A2B3C4D5E6F"),
        "malformed",
        "bulletin_id",
        id="bulletin-id-upper",
    ),
    pytest.param(
        put(("header", "bulletin_id"), "0f8c7b52-3c1d-1e2a-9b7f-1a2b3c4d5e6f"),
        "malformed",
        "bulletin_id",
        id="bulletin-id-uuid1",
    ),
    pytest.param(
        put(("header", "signer"), "sig-" + "0" * 31), "malformed", "header.signer", id="bad-kid"
    ),
    pytest.param(put(("body", "ct"), "QUJD\n"), "malformed", "body.ct", id="b64-newline"),
    pytest.param(put(("body", "ct"), "-_8="), "malformed", "body.ct", id="B-10-url-safe"),
    # B-19 and the wrap/recipient correspondence.
    pytest.param(_extra_wrap, "malformed", "wrap list", id="B-19-extra-wrap"),
    pytest.param(drop(("wraps", 0)), "malformed", "wrap list", id="missing-wrap"),
    pytest.param(_swap_wraps, "malformed", "wrap list", id="wraps-reordered"),
    pytest.param(put(("wraps", 0, "recipient"), C.id), "malformed", "wrap list", id="wrap-renamed"),
    pytest.param(_unsorted_recipients, "malformed", "sorted", id="recipients-unsorted"),
    pytest.param(_duplicate_recipient, "malformed", "sorted", id="recipients-duplicated"),
    pytest.param(
        put(("sig", "kid"), R1.verify_key.kid), "malformed", "signer", id="sig-kid-not-signer"
    ),
]


@pytest.mark.parametrize(("mutate", "code", "where"), HOSTILE_PARSE)
def test_hostile_envelope_fields(
    mutate: Callable[[dict[str, Any]], None], code: str, where: str
) -> None:
    d = json.loads(encode_envelope(BASE))
    mutate(d)
    with pytest.raises(EnvelopeError) as exc_info:
        parse_envelope(as_json(d))
    assert type(exc_info.value) is EnvelopeError
    assert exc_info.value.code == code
    assert where in str(exc_info.value)


def _nested_at_labels(depth: int) -> bytes:
    raw = encode_envelope(BASE)
    return raw.replace(b'"labels":{', b'"labels":' + b'{"x":' * depth + b"{", 1).replace(
        b'"tlp":"AMBER"}', b'"tlp":"AMBER"}' + b"}" * depth, 1
    )


HOSTILE_RAW: list[Any] = [
    pytest.param(
        encode_envelope(BASE).replace(
            b'"originator":"policia-pa"', b'"originator":"policia-pa","originator":"policia-ni"'
        ),
        "malformed",
        id="B-01-duplicate-originator",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"v":1', b'"v":1,"v":1', 1),
        "malformed",
        id="B-01-duplicate-same-value",
    ),
    pytest.param(_nested_at_labels(10_000), "malformed", id="B-03-10000-deep"),
    pytest.param(_nested_at_labels(100), "malformed", id="100-deep"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "malformed", id="B-03-top-level-lists"),
    pytest.param(
        encode_envelope(BASE).replace(b'"policia-pa"', b'"policia\xd0\xb0pa"', 1),
        "malformed",
        id="B-06-raw-cyrillic",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"policia-pa"', b'"policia\xffpa"', 1),
        "malformed",
        id="B-04-invalid-utf8",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"policia-pa"', b'"policia\xc0\xadpa"', 1),
        "malformed",
        id="B-04-overlong-dash",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"policia-pa"', b'"policia\x00pa"', 1),
        "malformed",
        id="B-04-raw-nul",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"policia-pa"', b'"policia\\u0000pa"', 1),
        "malformed",
        id="B-04-escaped-nul",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"tlp":"AMBER"', b'"tlp":"AMBER","handling_note":"\\ud800"'),
        "malformed",
        id="B-04-lone-surrogate",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"created_at":', b'"created_at":1.0e0,"x":', 1),
        "malformed",
        id="float",
    ),
    pytest.param(
        encode_envelope(BASE).replace(b'"created_at":' + str(NOW).encode(), b'"created_at":NaN', 1),
        "malformed",
        id="nan",
    ),
    pytest.param(b"null", "malformed", id="null"),
    pytest.param(b"[]", "malformed", id="list"),
    pytest.param(b"", "malformed", id="empty"),
    pytest.param(b" " * (1024 * 1024 + 1), "oversized", id="B-02-oversized"),
]


@pytest.mark.parametrize(("raw", "code"), HOSTILE_RAW)
def test_hostile_envelope_bytes(raw: bytes, code: str) -> None:
    with pytest.raises(EnvelopeError) as exc_info:
        parse_envelope(raw)
    assert type(exc_info.value) is EnvelopeError
    assert exc_info.value.code == code


def test_parse_max_bytes_is_configurable() -> None:
    raw = encode_envelope(BASE)
    assert parse_envelope(raw, max_bytes=len(raw)) == BASE
    with pytest.raises(EnvelopeError) as exc_info:
        parse_envelope(raw, max_bytes=len(raw) - 1)
    assert exc_info.value.code == "oversized"


# --- signatures (B-11..B-15) ---------------------------------------------------------------


def _flip_field(*path: str | int, index: int = 0) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = _flip(target[path[-1]], index=index)

    return mutate


def _bump(*path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] += 1

    return mutate


def _last_hex(d: dict[str, Any]) -> None:
    bid = d["header"]["bulletin_id"]
    d["header"]["bulletin_id"] = bid[:-1] + ("0" if bid[-1] != "0" else "1")


TAMPER: list[Any] = [
    pytest.param(_flip_field("body", "ct"), id="B-11-ciphertext-first-byte"),
    pytest.param(_flip_field("body", "ct", index=-1), id="B-21-gcm-tag"),
    pytest.param(_flip_field("body", "nonce"), id="B-11-nonce"),
    pytest.param(_flip_field("wraps", 0, "enc"), id="B-11-wrap-enc-first"),
    pytest.param(_flip_field("wraps", 1, "enc", index=-1), id="B-11-wrap-enc-last"),
    pytest.param(put(("wraps", 0, "kid"), R3.pub("X25519").kid), id="wrap-kid"),
    pytest.param(_flip_field("header", "key_commitment"), id="B-11-header-commitment"),
    pytest.param(_bump("header", "created_at"), id="B-11-header-created-at"),
    pytest.param(_last_hex, id="B-11-header-bulletin-id"),
    pytest.param(put(("header", "originator"), M.id), id="header-originator"),
    pytest.param(put(("header", "labels", "tlp"), "CLEAR"), id="header-label"),
    pytest.param(put(("header", "labels", "classification"), "UNCLASSIFIED"), id="downgrade"),
    pytest.param(put(("header", "expires_at"), NOW + 60), id="header-add-expiry"),
    pytest.param(put(("header", "labels", "handling"), []), id="header-drop-caveat"),
    pytest.param(_flip_field("sig", "value"), id="sig-R"),
    pytest.param(_flip_field("sig", "value", index=40), id="sig-S"),
    # B-12: wrong signature lengths, and an all-zero signature.
    pytest.param(put(("sig", "value"), ""), id="B-12-empty"),
    pytest.param(put(("sig", "value"), b64e(bytes(63))), id="B-12-63-bytes"),
    pytest.param(put(("sig", "value"), b64e(bytes(65))), id="B-12-65-bytes"),
    pytest.param(put(("sig", "value"), b64e(bytes(64))), id="zero-signature"),
]


@pytest.mark.parametrize("mutate", TAMPER)
def test_tampering_breaks_the_signature(mutate: Callable[[dict[str, Any]], None]) -> None:
    env = _mutated(BASE, mutate)
    with pytest.raises(SignatureError) as exc_info:
        verify_envelope(env, A.verify_key)
    assert exc_info.value.code == "signature_invalid"
    for who in (R1, R2):
        with pytest.raises(SignatureError) as exc_info:
            _open(env, who, "X25519")
        assert exc_info.value.code == "signature_invalid"


@pytest.mark.parametrize("length", [0, 63, 65, 66])
def test_signature_length_is_a_shape_error_too(length: int) -> None:
    env = _mutated(BASE, put(("sig", "value"), b64e(os.urandom(length))))
    with pytest.raises(SignatureError):
        check_envelope_shape(env)


def test_b13_non_canonical_s_is_rejected() -> None:
    sig = base64.b64decode(BASE.sig.value)
    s = int.from_bytes(sig[32:], "little")
    forged = sig[:32] + (s + _L).to_bytes(32, "little")
    env = _mutated(BASE, put(("sig", "value"), b64e(forged)))
    with pytest.raises(SignatureError) as exc_info:
        verify_envelope(env, A.verify_key)
    assert exc_info.value.code == "signature_invalid"


def test_b15_signed_by_another_agencys_key() -> None:
    # M signs with its own (registered) key, naming itself as signer, claiming to be A.
    env = _build("X25519", originator=A, recipients=(R1,), signer=M)
    assert env.header.originator == A.id
    verify_envelope(env, M.verify_key)  # the signature itself is fine ...
    with pytest.raises(SignatureError) as exc_info:
        verify_envelope(env, A.verify_key)  # ... but the broker checks it against A's key
    assert exc_info.value.code == "key_not_bound_to_sender"
    with pytest.raises(SignatureError) as exc_info:
        _open(env, R1, "X25519")
    assert exc_info.value.code == "key_not_bound_to_sender"


def test_b15_signed_by_another_key_under_the_senders_kid() -> None:
    env = _build("X25519", originator=A, recipients=(R1,))
    header = env.header
    forged = _signed(header, env.body, env.wraps, by=M)  # kid still A's
    with pytest.raises(SignatureError) as exc_info:
        verify_envelope(forged, A.verify_key)
    assert exc_info.value.code == "signature_invalid"


def test_verify_does_not_accept_a_signature_from_another_envelope() -> None:
    other = seal_for("X25519", (R1, R2))
    env = _mutated(BASE, put(("sig", "value"), other.sig.value))
    with pytest.raises(SignatureError):
        verify_envelope(env, A.verify_key)


# --- encryption and binding (B-19..B-25, S-09..S-11) ---------------------------------------


@pytest.mark.parametrize("kem", KEMS)
def test_not_a_recipient(kem: KemName) -> None:
    env = seal_for(kem, (R1, R2))
    with pytest.raises(DecryptionError) as exc_info:
        _open(env, C, kem)
    assert exc_info.value.code == "not_a_recipient"


@pytest.mark.parametrize("kem", KEMS)
def test_b24_recipient_key_rotated(kem: KemName) -> None:
    env = seal_for(kem, (R1, R2))
    rotated = EncryptionKey.generate(kem)
    with pytest.raises(DecryptionError) as exc_info:
        open_envelope(env, recipient=R1.id, key=rotated, sender_key=A.verify_key)
    assert exc_info.value.code == "recipient_key_unknown"


def test_b24_recipient_key_of_the_other_kem() -> None:
    env = seal_for("MLKEM768-X25519", (R1,))
    with pytest.raises(DecryptionError) as exc_info:
        _open(env, R1, "X25519")
    assert exc_info.value.code == "recipient_key_unknown"


def test_b24_another_recipients_key() -> None:
    env = seal_for("X25519", (R1, R2))
    with pytest.raises(DecryptionError) as exc_info:
        open_envelope(env, recipient=R1.id, key=R2.enc["X25519"], sender_key=A.verify_key)
    assert exc_info.value.code == "recipient_key_unknown"


def test_s10_wrap_info_binds_bulletin_sender_and_recipient() -> None:
    key = os.urandom(32)
    base = _header(originator=A, recipients=(R1, R2), key=key)
    hd = header_digest(base)
    info = _wrap_info(hd, R1.id, R1.pub("X25519").kid)
    assert hd in info
    assert R1.id.encode() in info
    assert R1.pub("X25519").kid.encode() in info
    assert info != _wrap_info(hd, R2.id, R1.pub("X25519").kid)
    # The digest covers the bulletin id and the originator, so the info does too.
    other_id = base.model_copy(update={"bulletin_id": "11111111-2222-4333-8444-555555555555"})
    other_sender = base.model_copy(update={"originator": M.id})
    assert len({hd, header_digest(other_id), header_digest(other_sender)}) == 3


def _transplant(kem: KemName, header_of_y: Callable[[Header], Header]) -> tuple[Envelope, Envelope]:
    """B-20/S-10: M moves R1's wrap from A's bulletin X into its own Y and signs Y."""
    x = seal_for(kem, (R1, R2))
    y_header = header_of_y(x.header)
    y_wraps = [w for w in x.wraps if w.recipient == R1.id]
    y = _signed(y_header, x.body, y_wraps, by=M)
    return x, parse_envelope(encode_envelope(y))


def _y_new_id(h: Header) -> Header:
    return h.model_copy(
        update={
            "bulletin_id": "11111111-2222-4333-8444-555555555555",
            "originator": M.id,
            "signer": M.verify_key.kid,
            "recipients": (R1.id,),
        }
    )


def _y_same_id(h: Header) -> Header:
    return h.model_copy(
        update={"originator": M.id, "signer": M.verify_key.kid, "recipients": (R1.id,)}
    )


def _y_other_labels(h: Header) -> Header:
    return _y_same_id(h).model_copy(update={"created_at": h.created_at + 1})


@pytest.mark.parametrize("kem", KEMS)
@pytest.mark.parametrize(
    "header_of_y", [_y_new_id, _y_same_id, _y_other_labels], ids=["new-id", "same-id", "later"]
)
def test_b20_transplanted_wrap_does_not_open(
    kem: KemName, header_of_y: Callable[[Header], Header]
) -> None:
    x, y = _transplant(kem, header_of_y)
    assert _open(x, R1, kem).content == CONTENT  # the wrap is good where it belongs
    verify_envelope(y, M.verify_key)  # Y is validly signed by M ...
    check_envelope_shape(y)
    with pytest.raises(DecryptionError) as exc_info:
        _open(y, R1, kem, sender=M)  # ... and still yields nothing
    assert exc_info.value.code == "wrap_invalid"
    assert str(exc_info.value) == UNIFORM


@pytest.mark.parametrize("kem", KEMS)
def test_b20_wrap_moved_by_the_broker_breaks_the_signature(kem: KemName) -> None:
    x, y = seal_for(kem, (R1, R2)), seal_for(kem, (R1, R2))
    moved = _mutated(y, put(("wraps", 0), _as_dict(x)["wraps"][0]))
    with pytest.raises(SignatureError):
        _open(moved, R1, kem)


@pytest.mark.parametrize("kem", KEMS)
def test_b22_key_commitment_mismatch(kem: KemName) -> None:
    # S-11: A signs correctly but wraps a different content key for R2 than the committed one.
    k1, k2 = os.urandom(32), os.urandom(32)
    header = _header(originator=A, recipients=(R1, R2), key=k1)
    hd = header_digest(header)
    body = _body(k1, _inner(header), hd)
    env = _signed(header, body, [_wrap(R1, kem, k1, hd), _wrap(R2, kem, k2, hd)], by=A)
    env = parse_envelope(encode_envelope(env))
    verify_envelope(env, A.verify_key)
    check_envelope_shape(env)
    assert _open(env, R1, kem).content == CONTENT
    with pytest.raises(DecryptionError) as exc_info:
        _open(env, R2, kem)
    # Checked before the body is tried: otherwise this would be body_invalid.
    assert exc_info.value.code == "key_commitment_mismatch"


@pytest.mark.parametrize("kem", KEMS)
def test_b22_body_under_a_key_other_than_the_committed_one(kem: KemName) -> None:
    # The committed key is wrapped to everyone, but the body is sealed under another key.
    k1, k2 = os.urandom(32), os.urandom(32)
    header = _header(originator=A, recipients=(R1,), key=k1)
    hd = header_digest(header)
    env = _signed(header, _body(k2, _inner(header), hd), [_wrap(R1, kem, k1, hd)], by=A)
    with pytest.raises(DecryptionError) as exc_info:
        _open(env, R1, kem)
    assert exc_info.value.code == "body_invalid"


@pytest.mark.parametrize(
    ("kem", "enc_len"),
    [
        ("X25519", 79),
        ("X25519", 81),
        ("X25519", 1168),
        ("MLKEM768-X25519", 1167),
        ("MLKEM768-X25519", 1169),
        ("MLKEM768-X25519", 80),
    ],
)
def test_b23_enc_of_wrong_length(kem: KemName, enc_len: int) -> None:
    env = seal_for(kem, (R1, R2))
    env = _mutated(env, put(("wraps", 1, "enc"), b64e(os.urandom(enc_len))))
    with pytest.raises(EnvelopeError) as exc_info:
        check_envelope_shape(env)
    assert exc_info.value.code == "malformed"
    assert "wrong length" in str(exc_info.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("header", "key_commitment"), b64e(bytes(31))),
        (("header", "key_commitment"), b64e(bytes(33))),
        (("body", "nonce"), b64e(bytes(11))),
        (("body", "nonce"), b64e(bytes(13))),
        (("wraps", 0, "enc"), "QUJ="),
    ],
    ids=["commitment-31", "commitment-33", "nonce-11", "nonce-13", "enc-non-canonical"],
)
def test_shape_check_refuses_wrong_lengths(path: FieldPath, value: str) -> None:
    env = _mutated(BASE, put(path, value))
    with pytest.raises(EnvelopeError):
        check_envelope_shape(env)


@pytest.mark.parametrize("kem", KEMS)
def test_b23_low_order_enc_signed_by_a_malicious_originator(kem: KemName) -> None:
    # Right length, so the broker's shape check passes; the recipient's HPKE open refuses it.
    key = os.urandom(32)
    header = _header(originator=M, recipients=(R1,), key=key)
    hd = header_digest(header)
    honest = _wrap(R1, kem, key, hd)
    enc = bytearray(base64.b64decode(honest.enc))
    x25519_at = 1088 if kem == "MLKEM768-X25519" else 0
    enc[x25519_at : x25519_at + 32] = bytes(32)
    bad = honest.model_copy(update={"enc": b64e(bytes(enc))})
    env = _signed(header, _body(key, _inner(header), hd), [bad], by=M)
    check_envelope_shape(env)
    with pytest.raises(DecryptionError) as exc_info:
        _open(env, R1, kem, sender=M)
    assert exc_info.value.code == "wrap_invalid"


def _forward_keep_originator_sign_as_b(kem: KemName, x: Envelope, key: bytes) -> Envelope:
    # B names itself as signer but keeps A as originator.
    header = x.header.model_copy(update={"recipients": (C.id,), "signer": R1.verify_key.kid})
    hd = header_digest(header)
    return _signed(header, x.body, [_wrap(C, kem, key, hd)], by=R1)


def _forward_keep_originator_and_kid(kem: KemName, x: Envelope, key: bytes) -> Envelope:
    # B keeps A's kid and signs with its own key.
    header = x.header.model_copy(update={"recipients": (C.id,)})
    hd = header_digest(header)
    return _signed(header, x.body, [_wrap(C, kem, key, hd)], by=R1)


def _forward_as_b_same_body(kem: KemName, x: Envelope, key: bytes) -> Envelope:
    # B becomes the originator, re-wraps A's content key for C, keeps A's ciphertext.
    header = x.header.model_copy(
        update={"originator": R1.id, "recipients": (C.id,), "signer": R1.verify_key.kid}
    )
    hd = header_digest(header)
    return _signed(header, x.body, [_wrap(C, kem, key, hd)], by=R1)


def _forward_as_b_reencrypted(kem: KemName, x: Envelope, key: bytes) -> Envelope:
    # As above, but B re-encrypts A's inner plaintext (ids and all) under the new header.
    header = x.header.model_copy(
        update={"originator": R1.id, "recipients": (C.id,), "signer": R1.verify_key.kid}
    )
    hd = header_digest(header)
    plain = AESGCM(key).decrypt(
        base64.b64decode(x.body.nonce), base64.b64decode(x.body.ct), header_digest(x.header)
    )
    return _signed(header, _body(key, plain, hd), [_wrap(C, kem, key, hd)], by=R1)


@pytest.mark.parametrize("kem", KEMS)
@pytest.mark.parametrize(
    ("forward", "sender", "error", "code"),
    [
        pytest.param(
            _forward_keep_originator_sign_as_b,
            A,
            SignatureError,
            "key_not_bound_to_sender",
            id="signed-by-b-as-a",
        ),
        pytest.param(
            _forward_keep_originator_and_kid,
            A,
            SignatureError,
            "signature_invalid",
            id="signed-by-b-under-a-kid",
        ),
        pytest.param(
            _forward_as_b_same_body, R1, DecryptionError, "body_invalid", id="b-as-originator"
        ),
        pytest.param(
            _forward_as_b_reencrypted,
            R1,
            DecryptionError,
            "inner_outer_mismatch",
            id="b-as-originator-reencrypted",
        ),
    ],
)
def test_s09_surreptitious_forwarding(
    kem: KemName,
    forward: Callable[[KemName, Envelope, bytes], Envelope],
    sender: Agency,
    error: type[EnvelopeError],
    code: str,
) -> None:
    # B (= R1) legitimately opens A's bulletin, learns the content key, and forwards to C.
    key = os.urandom(32)
    x = _build(kem, originator=A, recipients=(R1, R2), key=key)
    assert _open(x, R1, kem).content == CONTENT
    forwarded = parse_envelope(encode_envelope(forward(kem, x, key)))
    check_envelope_shape(forwarded)
    with pytest.raises(error) as exc_info:
        _open(forwarded, C, kem, sender=sender)  # C looks up the claimed originator's key
    assert exc_info.value.code == code


def _malicious(kem: KemName, plaintext: Callable[[Header], bytes], aad_ok: bool = True) -> Envelope:
    key = os.urandom(32)
    header = _header(originator=A, recipients=(R1,), key=key)
    hd = header_digest(header)
    body = _body(key, plaintext(header), hd if aad_ok else b"")
    return _signed(header, body, [_wrap(R1, kem, key, hd)], by=A)


_INNER_FAULTS: list[Any] = [
    pytest.param(lambda h: b"not json", "inner_malformed", id="garbage"),
    pytest.param(lambda h: b"{}", "inner_malformed", id="empty-object"),
    pytest.param(lambda h: b"[" * 10_000, "inner_malformed", id="deep"),
    pytest.param(lambda h: _inner(h)[:-1] + b',"extra":1}', "inner_malformed", id="extra-field"),
    pytest.param(
        lambda h: _inner(h, originator=M.id), "inner_outer_mismatch", id="inner-originator"
    ),
    pytest.param(
        lambda h: _inner(h, recipients=(R1.id, R2.id)),
        "inner_outer_mismatch",
        id="inner-recipients",
    ),
    pytest.param(
        lambda h: _inner(h, bulletin_id="11111111-2222-4333-8444-555555555555"),
        "inner_outer_mismatch",
        id="inner-bulletin-id",
    ),
]


@pytest.mark.parametrize("kem", KEMS)
@pytest.mark.parametrize(("plaintext", "code"), _INNER_FAULTS)
def test_b25_inner_faults(kem: KemName, plaintext: Callable[[Header], bytes], code: str) -> None:
    env = _malicious(kem, plaintext)
    with pytest.raises(DecryptionError) as exc_info:
        _open(env, R1, kem)
    assert exc_info.value.code == code


def test_body_not_bound_to_the_header_does_not_open() -> None:
    env = _malicious("X25519", _inner, aad_ok=False)
    with pytest.raises(DecryptionError) as exc_info:
        _open(env, R1, "X25519")
    assert exc_info.value.code == "body_invalid"


@pytest.mark.parametrize("kem", KEMS)
def test_decryption_errors_are_uniform(kem: KemName) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    h = _header(originator=A, recipients=(R1, R2), key=k1)
    hd = header_digest(h)
    salamander = _signed(
        h, _body(k1, _inner(h), hd), [_wrap(R1, kem, k1, hd), _wrap(R2, kem, k2, hd)], by=A
    )
    _, transplanted = _transplant(kem, _y_new_id)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: _open(seal_for(kem, (R2,)), R1, kem), "not_a_recipient"),
        (
            lambda: open_envelope(
                seal_for(kem, (R1,)),
                recipient=R1.id,
                key=EncryptionKey.generate(kem),
                sender_key=A.verify_key,
            ),
            "recipient_key_unknown",
        ),
        (lambda: _open(transplanted, R1, kem, sender=M), "wrap_invalid"),
        (lambda: _open(salamander, R2, kem), "key_commitment_mismatch"),
        (lambda: _open(_malicious(kem, _inner, aad_ok=False), R1, kem), "body_invalid"),
        (lambda: _open(_malicious(kem, lambda h: b"{}"), R1, kem), "inner_malformed"),
        (
            lambda: _open(_malicious(kem, lambda h: _inner(h, originator=M.id)), R1, kem),
            "inner_outer_mismatch",
        ),
    ]
    seen: dict[str, str] = {}
    for attempt, code in cases:
        with pytest.raises(DecryptionError) as exc_info:
            attempt()
        assert exc_info.value.code == code
        seen[code] = str(exc_info.value)
    assert len(seen) == len(cases)
    assert set(seen.values()) == {UNIFORM}
