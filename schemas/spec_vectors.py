"""The wire specification's test vectors (docs/spec/vectors/), made and checked by this code.

    python -m schemas.spec_vectors --write   write the files that differ
    python -m schemas.spec_vectors --check   exit 1, naming the files that differ

Every key is derived from a fixed label (``schemas.spec_envelopes.seed``), and Ed25519 is
deterministic, so keys, key ids, canonical encodings, digests, subjects, receipts,
withdrawals and signed directory answers come out the same on every run. Sealing is not
(see ``schemas.spec_envelopes``): a sealed envelope is made once and kept, and everything
else about it is derived again on every run. ``--check`` therefore fails when a file was
edited, when the code's behaviour drifted, or when ``schemas.spec_trace`` (the spec's
step-by-step HPKE) stops agreeing with ``cryptography``'s.

The JavaScript implementation (interop/js, ``npm run vectors``) checks the same files from
the spec alone; ``tests/core/test_spec_vectors.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.canonical import b64d, b64e, canonical_json, strict_loads
from schemas.errors import IstmoError
from schemas.ids import parse_agency_id
from schemas.labels import Precedence
from schemas.spec_attachments import attachments_doc
from schemas.spec_envelopes import envelopes
from schemas.spec_forwarding import forwarding_doc
from schemas.spec_groups import groups_doc
from schemas.spec_keys import (
    AGENCIES,
    DIRECTORY_OWNER,
    encryption_key,
    hex_of,
    signing_key,
    text_of,
)
from schemas.spec_messages import agency_api, signed_documents
from schemas.spec_messages import directory as directory_answers
from schemas.subjects import (
    ANNOUNCE_SUBJECT,
    API_OPS,
    ATTACH_OPS,
    account_name,
    api_subject,
    attach_api_subject,
    deliver_ack_subjects,
    deliver_durables,
    deliver_filter_subjects,
    deliver_next_subject,
    deliver_subject,
    inbox_prefix,
    ingest_subject,
    receipt_subject,
)

__all__ = ["VECTORS_DIR", "diff_files", "main", "render_all"]

VECTORS_DIR = Path(__file__).resolve().parents[1] / "docs" / "spec" / "vectors"


# ---------------------------------------------------------------------------- keys
def _keys() -> dict[str, Any]:
    agencies = []
    for agency, kem in AGENCIES.items():
        sk, ek = signing_key(agency), encryption_key(agency)
        agencies.append(
            {
                "agency": agency,
                "signing": {
                    "private": b64e(sk.private),
                    "public": b64e(sk.verify_key.public),
                    "kid": sk.verify_key.kid,
                },
                "encryption": {
                    "kem": kem,
                    "private": b64e(ek.private),
                    "public": b64e(ek.public_key.public),
                    "kid": ek.public_key.kid,
                },
            }
        )
    dk = signing_key(DIRECTORY_OWNER)
    return {
        "description": "Fixed keys of the vectors (never use them elsewhere). Signing: "
        "Ed25519 private seed (32 bytes) and public key. Encryption: for MLKEM768-X25519 the "
        "private key is the ML-KEM-768 seed d||z (64 bytes) then the X25519 private key (32), "
        "the public key the ML-KEM-768 encapsulation key (1184) then the X25519 public key "
        "(32); for X25519 both are 32 bytes. kid: see keys.md.",
        "agencies": agencies,
        "directory_key": {
            "private": b64e(dk.private),
            "public": b64e(dk.verify_key.public),
            "kid": dk.verify_key.kid,
        },
    }


# ---------------------------------------------------------------------------- canonical JSON
_ENCODE: list[Any] = [
    {"b": 1, "a": [True, False, None], "c": {"é": "ü", "e": "x"}},
    {"\uffff": 1, "😀": 2, "a": 3, "Z": 4, "é": 5, "": 6},
    {"s": 'quote" backslash\\ nl\n tab\t cr\r bs\b ff\f ctrl\x01 del\x7f nul\x00 ls\u2028 /'},
    {"big": 2**40, "neg": -5, "zero": 0, "list": [], "obj": {}},
    "just a string",
    [[[[[[[[[[[[[[[["sixteen levels down is the deepest allowed"]]]]]]]]]]]]]]]],
]
_REJECT: list[tuple[str, bytes]] = [
    ("duplicate key", b'{"a":1,"a":2}'),
    ("float", b'{"a":1.0}'),
    ("exponent (a float)", b'{"a":1e3}'),
    ("NaN", b'{"a":NaN}'),
    ("Infinity", b'{"a":-Infinity}'),
    ("lone surrogate escape", b'{"a":"\\ud800"}'),
    ("nested deeper than 16", b"[" * 18 + b"]" * 18),
    ("not UTF-8", b'{"a":"\xff"}'),
    ("NUL byte outside a string", b'{"a":1}\x00'),
    ("trailing garbage", b'{"a":1} x'),
]
_B64_OK = [("", b""), ("QQ==", b"A"), ("QUI=", b"AB"), ("QUJD", b"ABC"), ("+/8=", b"\xfb\xff")]
_B64_REJECT = [
    ("QQ", "no padding"),
    ("QR==", "non-zero padding bits: not canonical"),
    ("QQ==\n", "white space"),
    ("-_8=", "URL-safe alphabet"),
    ("QQ=", "padding short"),
]


def _canonical() -> dict[str, Any]:
    encode = [
        {
            "value": v,
            "canonical": text_of(canonical_json(v)),
            "canonical_hex": hex_of(canonical_json(v)),
        }
        for v in _ENCODE
    ]
    for value in _ENCODE:  # what canonical_json writes, strict_loads reads back unchanged
        if strict_loads(canonical_json(value), max_bytes=1 << 20) != value:
            raise AssertionError(f"{value!r} does not round-trip")
    reject = []
    for why, raw in _REJECT:
        try:
            strict_loads(raw, max_bytes=1 << 20)
        except IstmoError:
            reject.append({"why": why, "raw_hex": hex_of(raw)})
            continue
        raise AssertionError(f"strict_loads accepted the {why} vector")
    b64_reject = []
    for text, why in _B64_REJECT:
        try:
            b64d(text, field="vector", max_bytes=64)
        except IstmoError:
            b64_reject.append({"text": text, "why": why})
            continue
        raise AssertionError(f"b64d accepted the {why} vector")
    return {
        "description": "encode: canonical_json(value) as UTF-8 text and hex. reject: byte "
        "strings a strict parser must refuse. base64: standard alphabet, padded, canonical.",
        "encode": encode,
        "reject": reject,
        "base64_accept": [
            {"text": t, "hex": hex_of(b)}
            for t, b in _B64_OK
            if b64d(t, field="v", max_bytes=64) == b
        ],
        "base64_reject": b64_reject,
    }


# ---------------------------------------------------------------------------- ids and subjects
_GOOD_IDS = ["gt-police", "rc-drugs", "abc", "a" * 32, "0-9"]
_BAD_IDS = ["ab", "a" * 33, "-gt", "gt-", "GT-police", "gt_police", "gt.police", "gt police", "*"]


def _subjects() -> dict[str, Any]:
    agency = "gt-police"
    for bad in _BAD_IDS:
        try:
            parse_agency_id(bad)
        except IstmoError:
            continue
        raise AssertionError(f"{bad!r} passed as an agency id")
    durables = deliver_durables(agency)
    return {
        "description": "Subjects, consumers and names for one agency; ids that are and are "
        "not agency ids (^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$).",
        "agency": agency,
        "agency_ids_valid": [parse_agency_id(a) for a in _GOOD_IDS],
        "agency_ids_invalid": _BAD_IDS,
        "ingest": ingest_subject(agency),
        "receipt": receipt_subject(agency),
        "api": {op: api_subject(agency, op) for op in API_OPS},
        "attachments": {op: attach_api_subject(agency, op) for op in ATTACH_OPS},
        "announce": ANNOUNCE_SUBJECT,
        "inbox_prefix": inbox_prefix(agency),
        "account": account_name(agency),
        "deliver": {p.value: deliver_subject(agency, p) for p in Precedence},
        "consumers": [
            {
                "durable": d,
                "filter_subjects": list(deliver_filter_subjects(d)),
                "pull": deliver_next_subject(d),
                "acks": deliver_ack_subjects(d),
            }
            for d in durables
        ],
    }


# ---------------------------------------------------------------------------- files
def _as_file(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _kept(path: Path) -> dict[str, Any] | None:
    """A vector file written before, whose random parts are kept while they still open."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def render_all(directory: Path = VECTORS_DIR) -> dict[str, str]:
    """Every vector file's text, keeping the sealed envelopes of ``directory`` that still
    open (see the module docstring).

    Returns:
        File name -> text (2-space indent, keys in the order written, trailing newline).
    """
    sealed = envelopes(_kept(directory / "envelopes.json"))
    groups = groups_doc(_kept(directory / "groups.json"))
    signed_docs = signed_documents(sealed)
    docs = {
        "keys.json": _keys(),
        "canonical.json": _canonical(),
        "subjects.json": _subjects(),
        "envelopes.json": sealed,
        "groups.json": groups,
        "attachments.json": attachments_doc(
            next(c for c in sealed["cases"] if c["name"] == "attachments")
        ),
        "forwarding.json": forwarding_doc(sealed),
        "signed-documents.json": signed_docs,
        "directory.json": directory_answers(),
        "agency-api.json": agency_api(sealed, signed_docs, groups),
    }
    return {name: _as_file(doc) for name, doc in docs.items()}


def diff_files(directory: Path = VECTORS_DIR) -> list[str]:
    """Names of the vector files in ``directory`` that are missing or differ."""
    return [
        name
        for name, text in render_all(directory).items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Write the vector files, or with ``--check`` report those that differ.

    Returns:
        0 when the files are (now) current; 1 when ``--check`` found files that differ.
    """
    parser = argparse.ArgumentParser(prog="python -m schemas.spec_vectors", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the files that differ")
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 on a difference")
    parser.add_argument("--dir", type=Path, default=VECTORS_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        stale = diff_files(directory)
        for name in stale:
            print(f"{directory / name}: differs; run python -m schemas.spec_vectors --write")
        return 1 if stale else 0
    rendered = render_all(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
