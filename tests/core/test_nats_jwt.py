"""NATS JWTs as nats-io/jwt v2 writes them (pure; ``broker.bus.natsjwt``).

The ``jti`` below is worked out here independently (SHA-512/256 of the compact standard
claims, base32 without padding); nats-server's own tests hold JWTs whose ``jti`` this
formula reproduces, and tests/integration/test_nats_operator.py shows the server accepting
what ``encode_jwt`` signs.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from broker.bus.natsjwt import (
    MAX_JWT_BYTES,
    JwtError,
    claim_id,
    decode_jwt,
    derive_seed,
    encode_jwt,
    public_key,
)

MASTER = bytes(range(32))
OPERATOR = derive_seed(MASTER, "operator", "operator")
ACCOUNT = derive_seed(MASTER, "account", "account")
USER = derive_seed(MASTER, "user", "user")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    head, body, _ = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(head + "==")),
        json.loads(base64.urlsafe_b64decode(body + "==")),
    )


def resigned(token: str, claims: dict[str, object], signer: str) -> str:
    """``token`` with other claims, signed again by ``signer`` (a forgery's tool)."""
    import nkeys

    head = token.split(".")[0]
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    kp = nkeys.from_seed(bytearray(signer.encode()))
    return f"{head}.{body}.{b64(kp.sign(f'{head}.{body}'.encode()))}"


def test_a_user_jwt_has_the_v2_shape_and_decodes_to_what_was_signed() -> None:
    token = encode_jwt(
        "user",
        signer=ACCOUNT,
        subject=public_key(USER),
        issued_at=1_700_000_000,
        name="gt-police",
        nats={"subs": -1},
    )
    header, claims = parts(token)

    assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert list(claims) == ["jti", "iat", "iss", "name", "sub", "nats"]
    assert claims["nats"] == {"subs": -1, "type": "user", "version": 2}
    decoded = decode_jwt(token, kind="user")
    assert (decoded.kind, decoded.issuer, decoded.subject) == (
        "user",
        public_key(ACCOUNT),
        public_key(USER),
    )
    assert (decoded.name, decoded.issued_at, dict(decoded.nats)) == (
        "gt-police",
        1_700_000_000,
        {"subs": -1},
    )


def test_the_jti_hashes_the_standard_claims_only() -> None:
    kwargs = {"signer": OPERATOR, "subject": public_key(ACCOUNT), "issued_at": 1_700_000_000}
    one = encode_jwt("account", nats={"limits": {"conn": 1}}, name="x", **kwargs)
    two = encode_jwt("account", nats={"limits": {"conn": 2}}, name="x", **kwargs)
    standard = {
        "iat": 1_700_000_000,
        "iss": public_key(OPERATOR),
        "name": "x",
        "sub": public_key(ACCOUNT),
    }
    expected = (
        base64.b32encode(
            hashlib.new("sha512_256", json.dumps(standard, separators=(",", ":")).encode()).digest()
        )
        .decode()
        .rstrip("=")
    )

    assert parts(one)[1]["jti"] == parts(two)[1]["jti"] == expected == claim_id(standard)
    # A later issue time is another jti (how a newer JWT of an account wins on every node).
    later = encode_jwt("account", nats={}, name="x", **{**kwargs, "issued_at": 1_700_000_001})
    assert parts(later)[1]["jti"] != expected


@pytest.mark.parametrize(
    ("kind", "signer"),
    [
        ("operator", ACCOUNT),
        ("account", USER),
        ("user", OPERATOR),
        ("user", USER),
        ("activation", USER),
    ],
)
def test_a_key_signs_only_the_claims_its_kind_may_sign(kind: str, signer: str) -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        encode_jwt(kind, signer=signer, subject=public_key(ACCOUNT), issued_at=1, nats={})  # type: ignore[arg-type]  # kinds from the table


def test_encoding_refuses_a_subject_that_is_no_nkey_and_reserved_nats_fields() -> None:
    with pytest.raises(ValueError, match="public nkey"):
        encode_jwt("user", signer=ACCOUNT, subject="gt-police", issued_at=1, nats={})
    with pytest.raises(ValueError, match="set by encode_jwt"):
        encode_jwt(
            "user", signer=ACCOUNT, subject=public_key(USER), issued_at=1, nats={"type": "x"}
        )


def _user_token() -> str:
    return encode_jwt("user", signer=ACCOUNT, subject=public_key(USER), issued_at=1, nats={})


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (lambda t: t.rsplit(".", 1)[0], "three parts"),
        (lambda t: t + ".x", "three parts"),
        (lambda t: b64(b'{"typ":"JWT","alg":"ed25519"}') + t[t.index(".") :], "header"),
        (lambda t: "!!!" + t[t.index(".") :], "not base64url|not JSON"),
        (lambda t: t[: t.rindex(".") + 1] + b64(b"\x00" * 64), "signature"),
        (
            lambda t: resigned(t, {**parts(t)[1], "iss": public_key(USER)}, USER),
            "cannot sign",
        ),
        (lambda t: resigned(t, {**parts(t)[1], "nats": {"type": "user"}}, ACCOUNT), "v2"),
        (
            lambda t: resigned(t, {**parts(t)[1], "nats": {"type": "x", "version": 2}}, ACCOUNT),
            "not a NATS",
        ),
        (lambda t: resigned(t, {**parts(t)[1], "iat": "1"}, ACCOUNT), "issue time"),
        (lambda t: resigned(t, {**parts(t)[1], "iss": 7}, ACCOUNT), "issuer or subject"),
        (lambda t: "a" * (MAX_JWT_BYTES + 1), "longer"),
    ],
)
def test_decoding_refuses_a_malformed_or_forged_jwt(forge: object, message: str) -> None:
    token = forge(_user_token())  # type: ignore[operator]  # the table's lambdas
    with pytest.raises(JwtError, match=message):
        decode_jwt(token)


def test_claims_signed_by_another_key_than_their_issuer_do_not_verify() -> None:
    token = _user_token()
    other = derive_seed(MASTER, "other", "account")
    with pytest.raises(JwtError, match="signature"):
        decode_jwt(resigned(token, parts(token)[1], other))


def test_decoding_checks_the_kind_asked_for() -> None:
    with pytest.raises(JwtError, match="not account claims"):
        decode_jwt(_user_token(), kind="account")


def test_derived_keys_are_stable_separate_and_of_their_kind() -> None:
    assert derive_seed(MASTER, "a", "account") == derive_seed(MASTER, "a", "account")
    assert derive_seed(MASTER, "a", "account") != derive_seed(MASTER, "b", "account")
    assert derive_seed(MASTER, "a", "account") != derive_seed(bytes(32), "a", "account")
    for kind, letter in (("operator", "O"), ("account", "A"), ("user", "U")):
        seed = derive_seed(MASTER, "k", kind)  # type: ignore[arg-type]  # from the table
        assert seed.startswith("S" + letter)
        assert public_key(seed).startswith(letter)
    with pytest.raises(ValueError, match="32 bytes"):
        derive_seed(b"short", "a", "account")
