"""The sealed envelopes of the spec's test vectors.

Keys come from ``schemas.spec_keys`` (fixed labels), so keys and key ids are the same on
every run. Sealing is not: ``seal`` draws the content key, the GCM nonces and HPKE's
ephemeral keys from the operating system. So an envelope is sealed once and kept
(``envelopes`` is given the file's cases): everything else about it (digests, signing
input, each wrap's HPKE intermediate values from ``schemas.spec_trace``, each group wrap's
associated data, the content key, the plaintext) is derived again from the kept envelope
and the fixed keys on every run, and a fresh one is sealed only if the kept one no longer
opens to its case. Files are written by ``schemas.spec_vectors``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from schemas.canonical import b64e, canonical_json
from schemas.envelope import Content, Envelope
from schemas.errors import IstmoError
from schemas.forwarding import Citation
from schemas.groups import EpochKey
from schemas.ids import AgencyId, BulletinId
from schemas.labels import Classification, Handling, Labels, Precedence, Tlp
from schemas.sealing import (
    encode_envelope,
    envelope_digest,
    header_digest,
    new_content_key,
    open_envelope,
    open_envelope_keyed,
    parse_envelope,
    seal,
)
from schemas.spec_attachments import metas, seal_files
from schemas.spec_forwarding import (
    FORWARD_FAILURES,
    FORWARDED_AT,
    FORWARDER,
    ORIGINAL_CASE,
    RECIPIENT,
    citation,
    recipient_check,
    spoilt_citation,
)
from schemas.spec_groups import EPOCH, GROUP, MEMBERS, epoch_key, group_wrap_trace
from schemas.spec_keys import (
    AGENCIES,
    DIRECTORY_OWNER,
    NOW,
    POLICY_VERSION,
    encryption_key,
    hex_of,
    signing_key,
    text_of,
)
from schemas.spec_trace import HPKE_IDS, XWING_LABEL, open_wrap_traced
from schemas.subjects import (
    ingest_msg_id,
    ingest_subject,
)

__all__ = [
    "AGENCIES",
    "CASES",
    "DIRECTORY_OWNER",
    "NOW",
    "POLICY_VERSION",
    "encryption_key",
    "envelopes",
    "hex_of",
    "signing_key",
    "text_of",
]

# ---------------------------------------------------------------------------- envelopes
# A FLASH alert to a community group (ADR 18, ADR 37).
_GROUP_LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
    precedence=Precedence.FLASH,
)
_RFI_LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
    precedence=Precedence.PRIORITY,
    named=("rc-drugs", "sv-police"),
)
CASES: dict[str, dict[str, Any]] = {
    "two-suites": {
        "bulletin_id": "3f0c1a52-7d4e-4b8a-9c21-5e6f7a8b9c0d",
        "recipients": ["rc-drugs", "sv-police"],
        "labels": Labels(
            topic="drug-trafficking",
            classification=Classification.RESTRICTED,
            tlp=Tlp.AMBER,
            rel_to=("SICA", "GT"),
            handling=(Handling.H2,),
            precedence=Precedence.PRIORITY,
            source_grade="B2",
        ),
        "content": Content(
            title="Lanchas rápidas — Puerto Barrios",
            text="Dos lanchas salieron a las 03:10 rumbo al noreste. 🚤",
        ),
        "expires_at": NOW + 7 * 86400,
    },
    "correction-embargoed": {
        "bulletin_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        "recipients": ["rc-drugs"],
        "labels": Labels(
            topic="drug-trafficking",
            classification=Classification.RESTRICTED,
            tlp=Tlp.AMBER,
            rel_to=("SICA",),
        ),
        "content": Content(title="Corrección: tres lanchas", text=""),
        "not_before": NOW + 60,
        "supersedes": "3f0c1a52-7d4e-4b8a-9c21-5e6f7a8b9c0d",
    },
    # A request for information (ADR 16) whose originator lets replies reach everyone.
    "rfi": {
        "bulletin_id": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
        "recipients": ["rc-drugs", "sv-police"],
        "labels": _RFI_LABELS,
        "content": Content(
            title="¿Quién vio las lanchas?", text="Pedimos avistamientos entre 02:00 y 05:00."
        ),
        "rfi_due": NOW + 3 * 3600,
        "reply_all": True,
    },
    # rc-drugs answers it: to its originator and, by reply-all, the other addressee.
    "reply": {
        "originator": "rc-drugs",
        "bulletin_id": "d2e3f4a5-b6c7-4d8e-9f0a-1b2c3d4e5f60",
        "recipients": ["gt-police", "sv-police"],
        "labels": _RFI_LABELS.model_copy(update={"named": ("gt-police", "rc-drugs", "sv-police")}),
        "content": Content(title="Re: ¿Quién vio las lanchas?", text="Dos, a las 03:10."),
        "in_reply_to": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
        "thread": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
    },
    # Sealed under a community group's epoch key (ADR 18) for rc-drugs and sv-police, with
    # one HPKE wrap for cr-police, whom the group does not cover.
    "group-sealed": {
        "bulletin_id": "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e",
        "recipients": ["cr-police"],
        "covered": ["rc-drugs", "sv-police"],
        "groups": True,
        "labels": _GROUP_LABELS,
        "content": Content(title="Alerta: lanchas hacia el noreste", text="Salieron a las 03:10."),
    },
    # The same, the group's epoch addressed as a whole (ADR 37): the header names the
    # epoch, its member count and digest, not its members; gt-police, a member, is its
    # originator and so not addressed by it.
    "group-addressed": {
        "bulletin_id": "6c7d8e9f-0a1b-4c2d-9e3f-4a5b6c7d8e9f",
        "recipients": ["cr-police"],
        "groups": True,
        "audience": True,
        "labels": _GROUP_LABELS,
        "content": Content(title="Alerta regional: lanchas", text="Salieron a las 03:40."),
    },
    # Two files (ADR 17): their chunks are in attachments.json.
    "attachments": {
        "bulletin_id": "e3f4a5b6-c7d8-4e9f-8a0b-1c2d3e4f5a6b",
        "recipients": ["rc-drugs", "sv-police"],
        "labels": Labels(
            topic="drug-trafficking",
            classification=Classification.RESTRICTED,
            tlp=Tlp.AMBER,
            rel_to=("SICA",),
        ),
        "content": Content(title="Fotos del muelle", text="Adjuntas.", attachments=metas()),
        "attachments": True,
        "expires_at": NOW + 30 * 86400,
    },
}
# rc-drugs passes the first case on to cr-police with gt-police's grant (ADR 20): the same
# content, sealed for cr-police alone, the labels naming it, expiring with the original,
# and citing it (``forwards``: the citation is made from that case as derived).
CASES["forward"] = {
    "originator": FORWARDER,
    "bulletin_id": "f4a5b6c7-d8e9-4f0a-9b1c-2d3e4f5a6b7c",
    "recipients": [RECIPIENT],
    "labels": CASES[ORIGINAL_CASE]["labels"].model_copy(update={"named": (RECIPIENT,)}),
    "content": CASES[ORIGINAL_CASE]["content"],
    "created_at": FORWARDED_AT,
    "expires_at": CASES[ORIGINAL_CASE]["expires_at"],
    "forwards": ORIGINAL_CASE,
}
# rc-drugs acknowledges the first case (ADR 27): a reply to its originator alone whose
# sealed content says a person read it and acted on it.
CASES["acknowledgement"] = {
    "originator": "rc-drugs",
    "bulletin_id": "a5b6c7d8-e9f0-4a1b-8c2d-3e4f5a6b7c8d",
    "recipients": ["gt-police"],
    "labels": CASES[ORIGINAL_CASE]["labels"].model_copy(update={"named": ("gt-police",)}),
    "content": Content(title="Acknowledged: read and acted on", text="", acknowledges=True),
    "in_reply_to": CASES[ORIGINAL_CASE]["bulletin_id"],
    "thread": CASES[ORIGINAL_CASE]["bulletin_id"],
}


def _originator(case: dict[str, Any]) -> str:
    return str(case.get("originator", "gt-police"))


def _epoch_keys(case: dict[str, Any]) -> tuple[EpochKey, ...]:
    return (epoch_key(),) if case.get("groups") else ()


def _seal_case(case: dict[str, Any], forward_of: Citation | None = None) -> Envelope:
    originator = _originator(case)
    bid = BulletinId(case["bulletin_id"])
    content_key = new_content_key()
    refs = seal_files(content_key, bid) if case.get("attachments") else None
    return seal(
        content=case["content"],
        labels=case["labels"],
        originator=AgencyId(originator),
        signing_key=signing_key(originator),
        recipients={AgencyId(r): encryption_key(r).public_key for r in sorted(case["recipients"])},
        now=case.get("created_at", NOW),
        expires_at=case.get("expires_at"),
        not_before=case.get("not_before"),
        bulletin_id=bid,
        supersedes=case.get("supersedes"),
        groups=_epoch_keys(case),
        covered=[AgencyId(r) for r in case.get("covered", ())],
        members={GROUP: MEMBERS} if case.get("audience") else None,
        in_reply_to=case.get("in_reply_to"),
        thread=case.get("thread"),
        reply_all=bool(case.get("reply_all")),
        rfi_due=case.get("rfi_due"),
        content_key=content_key,
        attachments=refs,
        forward_of=forward_of,
    )


def _addressed(env: Envelope) -> list[str]:
    """Whom ``env`` addresses: its recipients and, for an audience (ADR 37), the spec
    group's members but the originator."""
    out = set(env.header.recipients)
    if env.header.audience is not None:
        out |= set(MEMBERS) - {env.header.originator}
    return sorted(out)


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def _wrap_entry(env: Envelope, k: int, hd: bytes) -> dict[str, Any]:
    """Wrap ``k`` opened step by step with its recipient's key."""
    wrap = env.wraps[k]
    info = (
        b"istmo/v1/wrap\x00" + hd + b"\x00" + wrap.recipient.encode() + b"\x00" + wrap.kid.encode()
    )
    key = encryption_key(wrap.recipient)
    trace = open_wrap_traced(wrap.kem, key.private, base64.b64decode(wrap.enc), info)
    return {
        "recipient": wrap.recipient,
        "kem": wrap.kem,
        "hpke_ids": [f"0x{i:04x}" for i in HPKE_IDS[wrap.kem]],
        "info_hex": hex_of(info),
        "suite_id_hex": hex_of(trace.suite_id),
        "enc_bytes": len(trace.enc),
        **{f"{k}_hex": hex_of(v) for k, v in trace.kem_secrets.items()},
        "shared_secret_hex": hex_of(trace.shared_secret),
        "key_hex": hex_of(trace.key),
        "base_nonce_hex": hex_of(trace.base_nonce),
        "content_key_hex": hex_of(trace.plaintext),
    }


def _derive(
    name: str, case: dict[str, Any], env: Envelope, forward_of: Citation | None = None
) -> dict[str, Any]:
    """Everything about ``env`` that follows from it and the fixed keys; raises if it does
    not open for every recipient to the case's content, or (a forward) cites other than
    ``forward_of``."""
    originator = _originator(case)
    sender = signing_key(originator).verify_key
    hd = header_digest(env.header)
    body_bytes = base64.b64decode(env.body.nonce) + base64.b64decode(env.body.ct)
    signed: dict[str, Any] = {
        "header": _dump(env.header),
        "body_digest": hashlib.sha256(body_bytes).hexdigest(),
        "wraps": [_dump(w) for w in env.wraps],
    }
    if env.groups is not None:
        signed["groups"] = [_dump(g) for g in env.groups]
    signed_json = canonical_json(signed)
    signing = b"istmo/v1/envelope\x00" + signed_json
    sender.verify(base64.b64decode(env.sig.value), signing)
    if env.header.originator != originator or env.header.bulletin_id != case["bulletin_id"]:
        raise ValueError(f"{name}: another bulletin")
    if env.header.forward_of != forward_of or env.header.labels != case["labels"]:
        raise ValueError(f"{name}: other labels, or another citation")
    if forward_of is not None:
        recipient_check(env.header, RECIPIENT)  # its grant checks out
    keys = _epoch_keys(case)
    opened = []
    for agency in _addressed(env):
        inner, content_key = open_envelope_keyed(
            env,
            recipient=AgencyId(agency),
            key=encryption_key(agency),
            sender_key=sender,
            epoch_keys=keys,
        )
        if inner.content != case["content"]:
            raise ValueError(f"{name}: opens to other content")
        opened.append((inner, content_key))
    inner, content_key = opened[0]
    if any(k != content_key for _, k in opened):
        raise ValueError(f"{name}: opens under two content keys")
    wraps = [_wrap_entry(env, k, hd) for k in range(len(env.wraps))]
    if any(w["content_key_hex"] != hex_of(content_key) for w in wraps):
        raise ValueError(f"{name}: a wrap holds another key")
    if case.get("attachments") and env.header.attachments != seal_files(
        content_key, case["bulletin_id"]
    ):
        raise ValueError(f"{name}: signs other attachments")
    commitment = hashlib.sha256(b"istmo/v1/commit\x00" + content_key).digest()
    if b64e(commitment) != env.header.key_commitment:
        raise ValueError(f"{name}: commitment does not match")
    digest = envelope_digest(env)
    out = {
        "name": name,
        "originator": originator,
        "envelope": text_of(encode_envelope(env)),
        "envelope_sha256": digest,
        "ingest_subject": ingest_subject(originator),
        "ingest_msg_id": ingest_msg_id(originator, digest),
        "header_canonical": text_of(canonical_json(_dump(env.header))),
        "header_digest_hex": hex_of(hd),
        "body_digest": hashlib.sha256(body_bytes).hexdigest(),
        "signed_json": text_of(signed_json),
        "signing_input_sha256": hashlib.sha256(signing).hexdigest(),
        "content_key_hex": hex_of(content_key),
        "key_commitment_hex": hex_of(commitment),
        "inner_plaintext": text_of(
            canonical_json(inner.model_dump(mode="json", exclude_none=True))
        ),
        "wraps": wraps,
    }
    if env.groups is not None:
        out["covered"] = sorted(set(_addressed(env)) - {w.recipient for w in env.wraps})
        out["group_wraps"] = [group_wrap_trace(g, hd, content_key) for g in env.groups]
    return out


def envelopes(existing: dict[str, Any] | None) -> dict[str, Any]:
    kept = {c["name"]: c["envelope"] for c in (existing or {}).get("cases", [])}
    cases: list[dict[str, Any]] = []
    for name, case in CASES.items():
        cite = citation(_named(cases, case["forwards"])) if "forwards" in case else None
        derived = None
        if name in kept:
            try:
                derived = _derive(name, case, parse_envelope(kept[name].encode()), cite)
            except (IstmoError, ValueError, KeyError):
                derived = None  # edited or stale: seal afresh
        if derived is None:
            derived = _derive(name, case, _seal_case(case, cite), cite)
        cases.append(derived)
    return {
        "description": "Envelopes sealed by the Python SDK (by the originator named, to "
        "the recipients in the header), with every value a verifier recomputes. Open each "
        "wrap with the recipient's key from keys.json, and each group wrap with the epoch "
        "key of groups.json (covered: the recipients only a group wrap opens for). The "
        f"X-Wing label is hex {hex_of(XWING_LABEL)}.",
        "cases": cases,
        "failures": _failures(cases[0])
        + _group_failures(_named(cases, "group-sealed"))
        + _audience_failures(_named(cases, "group-addressed"))
        + _forward_failures(existing, _named(cases, ORIGINAL_CASE)),
    }


def _named(cases: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in cases if c["name"] == name)


def _held(*keys: EpochKey) -> list[dict[str, Any]]:
    return [
        {"group": k.group, "epoch": k.epoch, "kid": k.kid, "key_hex": hex_of(k.key)} for k in keys
    ]


def _audience_failures(case: dict[str, Any]) -> list[dict[str, Any]]:
    """An envelope addressed to the group's epoch as a whole (ADR 37) that its originator,
    a member holding the key, must refuse: it is not addressed by its own bulletin."""
    out = [
        {"why": "the originator, a member, is not addressed by the epoch", "open_as": "gt-police",
         "epoch_keys": _held(epoch_key()), "fails": "not_a_recipient",
         "envelope": case["envelope"]},
    ]  # fmt: skip
    _check_failures(out, case["originator"])
    return out


def _group_failures(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Group-sealed envelopes a covered recipient must refuse (``open_as`` holding
    ``epoch_keys``)."""
    doc = json.loads(case["envelope"])
    resigned = json.loads(case["envelope"])
    # A header the group wrap was not sealed for, signed again by the originator: the
    # signature holds, the group wrap's associated data does not.
    resigned["header"]["labels"]["handling_note"] = "re-sealed"
    body = base64.b64decode(doc["body"]["nonce"]) + base64.b64decode(doc["body"]["ct"])
    signed = {
        "header": resigned["header"],
        "body_digest": hashlib.sha256(body).hexdigest(),
        "wraps": resigned["wraps"],
        "groups": resigned["groups"],
    }
    key = signing_key(case["originator"])
    resigned["sig"]["value"] = b64e(key.sign(b"istmo/v1/envelope\x00" + canonical_json(signed)))
    out = [
        {"why": "a covered recipient that holds no epoch key", "open_as": "rc-drugs",
         "epoch_keys": [], "fails": "no_group_key", "envelope": case["envelope"]},
        {"why": "a key of the group's previous epoch", "open_as": "sv-police",
         "epoch_keys": _held(epoch_key(EPOCH - 1)), "fails": "no_group_key",
         "envelope": case["envelope"]},
        {"why": "the header changed and signed again: the group wrap is bound to the old one",
         "open_as": "rc-drugs", "epoch_keys": _held(epoch_key()), "fails": "wrap_invalid",
         "envelope": text_of(canonical_json(resigned))},
    ]  # fmt: skip
    _check_failures(out, case["originator"])
    return out


def _check_failures(out: list[dict[str, Any]], originator: str) -> None:
    """Each failure vector fails as it says when opened (its ``open_as``, holding its
    ``epoch_keys``).

    Raises:
        AssertionError: one opens, or fails with another code.
    """
    sender = signing_key(originator).verify_key
    for failure in out:
        env = parse_envelope(failure["envelope"].encode())
        agency = AgencyId(failure["open_as"])
        held = [EpochKey(k["group"], k["epoch"], k["kid"], bytes.fromhex(k["key_hex"]))
                for k in failure["epoch_keys"]]  # fmt: skip
        try:
            open_envelope(
                env,
                recipient=agency,
                key=encryption_key(agency),
                sender_key=sender,
                epoch_keys=held,
            )
        except IstmoError as exc:
            if exc.code != failure["fails"]:
                raise AssertionError(f"'{failure['why']}' fails with {exc.code}") from exc
            continue
        raise AssertionError(f"the failure vector '{failure['why']}' opened")


def _failures(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Envelopes a recipient must refuse, each made from the first case by one change."""
    doc = json.loads(case["envelope"])

    def changed(edit: Callable[[dict[str, Any]], None]) -> str:
        copy = json.loads(json.dumps(doc))
        edit(copy)
        return text_of(canonical_json(copy))

    def relabel(d: dict[str, Any]) -> None:
        d["header"]["labels"]["classification"] = "UNCLASSIFIED"

    def swap_body(d: dict[str, Any]) -> None:
        ct = bytearray(base64.b64decode(d["body"]["ct"]))
        ct[0] ^= 1
        d["body"]["ct"] = b64e(bytes(ct))

    def drop_wrap(d: dict[str, Any]) -> None:
        d["wraps"] = d["wraps"][:1]

    out = [
        {"why": "a label changed after signing", "open_as": "rc-drugs", "fails": "signature",
         "envelope": changed(relabel)},
        {"why": "the ciphertext changed after signing", "open_as": "rc-drugs",
         "fails": "signature", "envelope": changed(swap_body)},
        {"why": "a wrap removed: wraps no longer match the signed recipients",
         "open_as": "rc-drugs", "fails": "parse", "envelope": changed(drop_wrap)},
        {"why": "opened by an agency it was not sealed for", "open_as": "hn-police",
         "fails": "not_a_recipient", "envelope": case["envelope"]},
    ]  # fmt: skip
    sender = signing_key("gt-police").verify_key
    for failure in out:
        try:
            env = parse_envelope(failure["envelope"].encode())
            agency = AgencyId(failure["open_as"])
            open_envelope(env, recipient=agency, key=encryption_key(agency), sender_key=sender)
        except IstmoError:
            continue
        raise AssertionError(f"the failure vector '{failure['why']}' opened")
    return out


def _forward_failures(
    existing: dict[str, Any] | None, original: dict[str, Any]
) -> list[dict[str, Any]]:
    """Forwards whose grant their recipient must refuse (``forward_consent_invalid``):
    sealed like case ``forward`` but citing a spoilt grant, so they verify and open, and
    only the consent check refuses them. Sealed once and kept, like the cases."""
    case = CASES["forward"]
    kept = {f["why"]: f["envelope"] for f in (existing or {}).get("failures", [])}
    out = []
    for why in FORWARD_FAILURES:
        cite = spoilt_citation(original, why)
        env = None
        if why in kept:
            try:
                env = _refused_forward(parse_envelope(kept[why].encode()), case, cite)
            except (IstmoError, ValueError, KeyError):
                env = None  # edited or stale: seal afresh
        if env is None:
            env = _refused_forward(_seal_case(case, cite), case, cite)
        out.append({"why": why, "open_as": RECIPIENT, "fails": "forward_consent_invalid",
                    "envelope": text_of(encode_envelope(env))})  # fmt: skip
    return out


def _refused_forward(env: Envelope, case: dict[str, Any], cite: Citation) -> Envelope:
    """``env`` if it is a forward citing ``cite`` that opens for its recipient and whose
    consent that recipient refuses; raises ValueError otherwise."""
    h = env.header
    if (h.originator, h.bulletin_id, h.labels, h.forward_of) != (
        case["originator"],
        case["bulletin_id"],
        case["labels"],
        cite,
    ):
        raise ValueError("another forward")
    agency = AgencyId(RECIPIENT)
    inner = open_envelope(
        env,
        recipient=agency,
        key=encryption_key(agency),
        sender_key=signing_key(case["originator"]).verify_key,
    )
    if inner.content != case["content"]:
        raise ValueError("opens to other content")
    try:
        recipient_check(h, RECIPIENT)
    except IstmoError as exc:
        if exc.code == "forward_consent_invalid":
            return env
        raise
    raise AssertionError("a forward failure vector passed the consent check")
