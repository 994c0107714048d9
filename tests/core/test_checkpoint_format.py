"""C2SP signed notes, checkpoints and cosignatures (schemas.checkpoint): byte vectors and
the checks a verifier makes.

External vectors: the signed-note example of golang.org/x/mod/sumdb/note (the PeterNeumann
key, text and signature, also in c2sp.org/signed-note's implementations), and the
cosignature verifier key of transparency-dev/formats' tests (type 0x04, its key id).
Fixed vectors: a checkpoint of this log signed with a fixed log key, cosigned at a fixed
time by a fixed witness key (Ed25519 is deterministic, so the bytes are too).
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from schemas.checkpoint import (
    AddCheckpoint,
    Checkpoint,
    CosignerKey,
    NoteSignature,
    QuorumMissing,
    cosign,
    format_add_checkpoint,
    format_vkey,
    key_id,
    parse_add_checkpoint,
    parse_note,
    parse_vkey,
    required_trust,
    sign_checkpoint,
    trust_from_options,
    verify_checkpoint,
    verify_log_signature,
)
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import SigningKey

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
    "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
COSIG_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"

LOG = SigningKey(bytes(range(32)))
WITNESSES = [SigningKey(bytes(range(32 * i, 32 * i + 32))) for i in (1, 2, 3)]
NAMES = ["witness.gt-justice", "witness.cr-police", "witness.jm-justice"]
ORIGIN = "istmo.local/audit"
CP = Checkpoint(ORIGIN, 3000, hashlib.sha256(b"istmo").digest())
LOG_KEY = CosignerKey(ORIGIN, LOG.verify_key, 0x01)
TRUSTED = [CosignerKey(n, k.verify_key) for n, k in zip(NAMES, WITNESSES, strict=True)]
FIXED_NOTE = (
    "istmo.local/audit\n"
    "3000\n"
    "DAsrWSwLrYomVJqoDgV1HvQBlQaDcYAZyvzd8l/0agQ=\n"
    "\n"
    "\u2014 istmo.local/audit AfjH6XqLeJX/n6fR2NkCN0M1fp3UlmaEUg/8Vf3xojmV61Z2ZCbg8evet23Phz"
    "dZmhh5Ue0iGFRAoJNopLOazZ76JQg=\n"
    "\u2014 witness.gt-justice HbB+YQAAAABpVbkAbS6xZRnT00P43JPVPtRaV3mObd4a60zAKU9F0Mqfldk17b"
    "5XCbgHcmxYoGsAl+iaQhFQwYGlFsAAyyZ1hjdxCA==\n"
).encode()


def test_go_signed_note_vector() -> None:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == 0x01
    key = SigningKey(seed[1:])
    vkey = parse_vkey(GO_VKEY)  # checks the key id c74f20a3 = SHA-256(name\n 0x01 pub)[:4]
    assert vkey.key.public == key.verify_key.public
    assert format_vkey(vkey) == GO_VKEY
    line = NoteSignature("PeterNeumann", vkey.key_id, key.sign(GO_TEXT)).line()
    assert line == GO_LINE
    note = parse_note(GO_TEXT + b"\n" + GO_LINE.encode())
    assert note.body == GO_TEXT
    assert note.signatures[0].key_id.hex() == "c74f20a3"
    vkey.key.verify(note.signatures[0].sig, note.body)


def test_cosignature_vkey_vector() -> None:
    k = parse_vkey(COSIG_VKEY)
    assert (k.name, k.alg, k.key_id.hex()) == ("remora.n621.de", 0x04, "da77ade7")
    assert format_vkey(k) == COSIG_VKEY


def test_fixed_checkpoint_and_cosignature_bytes() -> None:
    note = sign_checkpoint(CP, LOG)
    cosigned = note.with_signatures([cosign(note.body, NAMES[0], WITNESSES[0], 1_767_225_600)])
    assert cosigned.encode() == FIXED_NOTE
    assert parse_note(FIXED_NOTE) == cosigned
    # The cosignature is u64 big-endian time || Ed25519 over the spec's message.
    sig = cosigned.signatures[1].sig
    assert int.from_bytes(sig[:8], "big") == 1_767_225_600
    message = b"cosignature/v1\ntime 1767225600\n" + CP.body()
    ed25519.Ed25519PublicKey.from_public_bytes(WITNESSES[0].verify_key.public).verify(
        sig[8:], message
    )
    assert cosigned.signatures[1].key_id == key_id(NAMES[0], 0x04, WITNESSES[0].verify_key.public)


def _cosigned(*which: int, body: bytes | None = None) -> bytes:
    note = sign_checkpoint(CP, LOG)
    sigs = [cosign(body or note.body, NAMES[i], WITNESSES[i], 1_767_225_600 + i) for i in which]
    return note.with_signatures(sigs).encode()


@pytest.mark.parametrize(
    ("which", "quorum", "error"),
    [
        ((0, 1, 2), 3, None),
        ((0, 2), 2, None),
        ((1,), 1, None),
        ((0,), 2, "has 1 of the 2 witness cosignatures required (cosigned: witness.gt-justice;"),
        ((), 1, "has 0 of the 1 witness cosignatures required (cosigned: none;"),
    ],
)
def test_quorum(which: tuple[int, ...], quorum: int, error: str | None) -> None:
    note = parse_note(_cosigned(*which))
    if error is None:
        cp, good = verify_checkpoint(note, LOG_KEY, TRUSTED, quorum)
        assert cp == CP
        assert good == [NAMES[i] for i in which]
    else:
        with pytest.raises(QuorumMissing, match=error.replace("(", r"\(")):
            verify_checkpoint(note, LOG_KEY, TRUSTED, quorum)


def test_a_cosignature_over_another_body_does_not_count() -> None:
    other = Checkpoint(ORIGIN, 3000, hashlib.sha256(b"forged").digest()).body()
    note = parse_note(_cosigned(0, body=other))
    with pytest.raises(QuorumMissing, match=r"witness.gt-justice \(signature does not verify\)"):
        verify_checkpoint(note, LOG_KEY, TRUSTED, 1)


def test_unknown_cosigners_are_ignored_not_counted() -> None:
    stranger = SigningKey(bytes(32))
    note = sign_checkpoint(CP, LOG)
    note = note.with_signatures([cosign(note.body, NAMES[0], stranger, 1)])  # name, other key
    with pytest.raises(QuorumMissing, match="no cosignature"):
        verify_checkpoint(note, LOG_KEY, TRUSTED, 1)


@pytest.mark.parametrize(
    ("note", "code"),
    [
        (sign_checkpoint(CP, SigningKey(bytes(32))).encode(), "unknown_key"),
        (
            sign_checkpoint(Checkpoint("other.log/audit", 1, CP.root), LOG).encode(),
            "origin_mismatch",
        ),
    ],
)
def test_log_signature_refusals(note: bytes, code: str) -> None:
    with pytest.raises(SignatureError) as err:
        verify_log_signature(parse_note(note), LOG_KEY)
    assert err.value.code == code


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"istmo.local/audit\n3000\nDAsr\n\n",  # no signature
        FIXED_NOTE.replace(b"\n\n", b"\n"),  # no blank line
        FIXED_NOTE.replace("\u2014".encode(), b"-"),  # not an em dash
        FIXED_NOTE + b"trailing",  # no final newline
        b"x" * 20_000,  # oversized
        b"\xff\n\n" + GO_LINE.encode(),  # not UTF-8
    ],
)
def test_malformed_notes(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_note(raw)


@pytest.mark.parametrize(
    "body",
    [
        b"istmo.local/audit\n03000\nDAsrWSwLrYomVJqoDgV1HvQBlQaDcYAZyvzd8l/0agQ=\n",  # leading 0
        b"istmo.local/audit\n3000\nDAsr\n",  # short hash
        b"istmo.local/audit\n3000\nDAsrWSwLrYomVJqoDgV1HvQBlQaDcYAZyvzd8l/0agQ=\next\n",
        b"istmo local\n3000\nDAsrWSwLrYomVJqoDgV1HvQBlQaDcYAZyvzd8l/0agQ=\n",  # space
    ],
)
def test_malformed_checkpoints(body: bytes) -> None:
    note = parse_note(body + b"\n" + GO_LINE.encode())
    with pytest.raises(EnvelopeError):
        note.checkpoint()


def test_add_checkpoint_round_trip_and_bounds() -> None:
    note = sign_checkpoint(CP, LOG)
    proof = (hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest())
    req = AddCheckpoint(2500, proof, note)
    raw = format_add_checkpoint(req)
    assert raw.startswith(b"old 2500\n" + base64.b64encode(proof[0]) + b"\n")
    assert parse_add_checkpoint(raw) == req
    for bad in (
        raw.replace(b"old 2500", b"old -1"),
        raw.replace(b"old 2500", b"ol 2500"),
        format_add_checkpoint(AddCheckpoint(0, proof, note)),  # a proof from 0
        format_add_checkpoint(AddCheckpoint(9, (proof[0],) * 64, note)),  # 64 lines
        note.encode(),  # no old line
    ):
        with pytest.raises(EnvelopeError):
            parse_add_checkpoint(bad)


VKEYS = [format_vkey(k) for k in TRUSTED]


@pytest.mark.parametrize(
    ("pairs", "quorum", "file", "want"),
    [
        ([f"{NAMES[0]}={VKEYS[0]}"], None, None, 1),
        ([f"{NAMES[0]}={VKEYS[0]}", f"{NAMES[1]}={VKEYS[1]}"], None, None, 2),
        ([f"{NAMES[0]}={VKEYS[0]}", f"{NAMES[1]}={VKEYS[1]}"], 1, None, 1),
        (
            [],
            None,
            {
                "quorum": 2,
                "witnesses": [{"name": n, "key": v} for n, v in zip(NAMES, VKEYS, strict=True)],
            },
            2,
        ),
        (
            [],
            3,
            {"witnesses": [{"name": n, "key": v} for n, v in zip(NAMES, VKEYS, strict=True)]},
            3,
        ),
        (
            [f"{NAMES[0]}=" + base64.b64encode(WITNESSES[0].verify_key.public).decode()],
            None,
            None,
            1,
        ),
        ([], None, None, None),
        ([f"{NAMES[0]}={VKEYS[0]}"], 2, None, "quorum 2 of 1"),
        ([f"{NAMES[0]}={VKEYS[0]}"], 0, None, "quorum 0 of 1"),
        ([f"{NAMES[0]}={VKEYS[0]}", f"{NAMES[0]}={VKEYS[0]}"], None, None, "named twice"),
        ([f"{NAMES[0]}"], None, None, "want NAME=KEY"),
        ([f"{NAMES[0]}={format_vkey(LOG_KEY)}"], None, None, "not valid base64"),
        ([f"{ORIGIN}={format_vkey(LOG_KEY)}"], None, None, "not a cosignature key"),
        ([], 1, None, "--quorum needs"),
        ([], None, {"witnesses": "x"}, "cannot read the witnesses file"),
    ],
)
def test_whom_a_verifier_trusts(
    pairs: list[str], quorum: int | None, file: dict[str, object] | None, want: object
) -> None:
    raw = None if file is None else (json.dumps(file).encode(), "trust.json")
    if isinstance(want, str):
        with pytest.raises(ConfigError, match=want):
            trust_from_options(pairs, quorum, raw)
        return
    trust = trust_from_options(pairs, quorum, raw)
    if want is None:
        assert trust is None
    else:
        assert trust is not None
        assert trust.quorum == want


FILE_OF_3 = {
    "quorum": 2,
    "witnesses": [{"name": n, "key": v} for n, v in zip(NAMES, VKEYS, strict=True)],
}


@pytest.mark.parametrize(
    ("pairs", "file", "alone", "default", "want"),
    [
        # Given witnesses win; a default is not even read.
        ([f"{NAMES[0]}={VKEYS[0]}"], None, False, FILE_OF_3, 1),
        ([], FILE_OF_3, False, None, 2),
        # None given: the default trust file (the auditor's, or the broker's own).
        ([], None, False, FILE_OF_3, 2),
        # None at all: refused, saying what to pass and how to opt out.
        ([], None, False, None, "no witnesses to check the audit log against"),
        ([], {"witnesses": []}, False, None, "names no witnesses"),
        ([], None, False, {"witnesses": []}, "names no witnesses"),
        # The explicit opt-out: no trust, and no witness option beside it.
        ([], None, True, FILE_OF_3, None),
        ([f"{NAMES[0]}={VKEYS[0]}"], None, True, None, "contradict each other"),
        ([], FILE_OF_3, True, None, "contradict each other"),
    ],
)
def test_a_verifier_requires_a_witness_trust_or_the_opt_out(
    pairs: list[str],
    file: dict[str, object] | None,
    alone: bool,
    default: dict[str, object] | None,
    want: object,
) -> None:
    raw = None if file is None else (json.dumps(file).encode(), "trust.json")
    fallback = None if default is None else (json.dumps(default).encode(), "env.json")
    if isinstance(want, str):
        with pytest.raises(ConfigError, match=want) as exc:
            required_trust(pairs, None, raw, log_key_alone=alone, default=fallback)
        if "no witnesses to check" in want:
            assert exc.value.code == "witnesses_required"
            assert "--trust-log-key-alone" in (exc.value.hint or "")
        return
    trust = required_trust(pairs, None, raw, log_key_alone=alone, default=fallback)
    assert (trust.quorum if trust is not None else None) == want
