"""The community group of the spec's test vectors (ADR 18): one epoch of one group, its
signed statement, its member wraps, and the group operations of the agency API.

The epoch key is fixed by a label (``schemas.spec_keys.seed``), so its commitment, key id,
statement and the manager's signature come out the same on every run. A member wrap is
HPKE and draws randomness: like a sealed envelope it is made once and kept (``groups_doc``
is given the file it wrote), and everything else about it is derived again on every run.
Files are written by ``schemas.spec_vectors``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError

from schemas.agency import ErrorReply, encode_reply, encode_request
from schemas.canonical import canonical_json
from schemas.envelope import GroupWrap
from schemas.errors import IstmoError
from schemas.group_requests import (
    EpochPost,
    EpochPostReply,
    EpochRef,
    GroupInfo,
    GroupKeysReply,
    GroupKeysRequest,
    GroupsReply,
    GroupsRequest,
    HeldKey,
    RosterMember,
    RosterReply,
    RosterRequest,
)
from schemas.groups import (
    EpochKey,
    EpochStatement,
    MemberWrap,
    SignedEpoch,
    epoch_statement,
    group_kid,
    members_digest,
    open_group_wrap,
    sign_epoch,
    unwrap_epoch_key,
    wrap_epoch_key,
)
from schemas.spec_keys import NOW, encryption_key, hex_of, seed, signing_key, text_of
from schemas.spec_trace import open_wrap_traced

__all__ = [
    "EPOCH",
    "GROUP",
    "MANAGER",
    "MEMBERS",
    "epoch_key",
    "group_exchanges",
    "group_wrap_trace",
    "groups_doc",
]

GROUP = "SICA-drugs"
EPOCH = 3
MANAGER = "rc-drugs"
MEMBERS = ("gt-police", "rc-drugs", "sv-police")
ISSUED_AT = NOW - 3600


def _commitment(key: bytes) -> bytes:
    return hashlib.sha256(b"istmo/v1/group-key\x00" + key).digest()


def epoch_key(epoch: int = EPOCH) -> EpochKey:
    """The vectors' key of ``epoch`` of ``GROUP`` (the other epochs are for failures)."""
    key = seed(f"group/{GROUP}/{epoch}", 32)
    return EpochKey(GROUP, epoch, group_kid(_commitment(key)), key)


def _statement() -> EpochStatement:
    return epoch_statement(epoch_key(), manager=MANAGER, members=MEMBERS, issued_at=ISSUED_AT)


def _signed() -> SignedEpoch:
    return sign_epoch(_statement(), signing_key(MANAGER))


def _member_info(member: str, kid: str) -> bytes:
    """The HPKE info of a member wrap, spelled out as groups.md writes it."""
    parts = (b"istmo/v1/group-wrap", GROUP.encode(), str(EPOCH).encode(), member.encode())
    return b"\x00".join((*parts, kid.encode(), _commitment(epoch_key().key)))


def _kept_wrap(text: str | None, member: str, st: EpochStatement) -> MemberWrap | None:
    """The kept wrap of ``member`` if it still opens to the epoch key, else None."""
    if text is None:
        return None
    try:
        wrap = MemberWrap.model_validate_json(text, strict=True)
        got = unwrap_epoch_key(st, wrap, member, encryption_key(member))
    except (IstmoError, ValidationError, ValueError):
        return None
    return wrap if got.key == epoch_key().key and wrap.agency == member else None


def member_wraps(existing: dict[str, Any] | None) -> dict[str, MemberWrap]:
    """Each member's wrap: the kept one while it opens, else a fresh one."""
    st = _statement()
    kept = {w["agency"]: w["wrap"] for w in (existing or {}).get("member_wraps", [])}
    out = {}
    for m in MEMBERS:
        wrap = _kept_wrap(kept.get(m), m, st)
        if wrap is None:
            wrap = wrap_epoch_key(epoch_key(), st, m, encryption_key(m).public_key)
        out[m] = wrap
    return out


def groups_doc(existing: dict[str, Any] | None) -> dict[str, Any]:
    """groups.json: the epoch, its statement and signature, and every member wrap opened
    step by step."""
    key, st, signed = epoch_key(), _statement(), _signed()
    commitment = _commitment(key.key)
    digest_input = b"istmo/v1/group-members\x00" + canonical_json(sorted(MEMBERS))
    if hashlib.sha256(digest_input).hexdigest() != members_digest(MEMBERS):
        raise AssertionError("the members digest differs from the spec's")
    entries = []
    for member, wrap in member_wraps(existing).items():
        info = _member_info(member, wrap.kid)
        trace = open_wrap_traced(
            wrap.kem, encryption_key(member).private, base64.b64decode(wrap.enc), info
        )
        if trace.plaintext != key.key:
            raise AssertionError(f"the wrap of {member} opens to another key")
        entries.append(
            {
                "agency": member,
                "wrap": text_of(canonical_json(wrap.model_dump(mode="json"))),
                "info_hex": hex_of(info),
                "suite_id_hex": hex_of(trace.suite_id),
                **{f"{k}_hex": hex_of(v) for k, v in trace.kem_secrets.items()},
                "shared_secret_hex": hex_of(trace.shared_secret),
                "key_hex": hex_of(trace.key),
                "base_nonce_hex": hex_of(trace.base_nonce),
                "epoch_key_hex": hex_of(trace.plaintext),
            }
        )
    other = epoch_key(EPOCH - 1)
    return {
        "description": "One epoch of a community group (groups.md): the epoch key, its "
        "commitment and key id, the members digest, the statement its manager signed "
        "(Ed25519, deterministic), and each member's HPKE wrap of the key with every "
        "intermediate value (the wraps are kept once made). other_epoch: a key of the "
        "previous epoch, which opens nothing sealed under this one.",
        "group": GROUP,
        "epoch": EPOCH,
        "manager": MANAGER,
        "members": list(MEMBERS),
        "epoch_key_hex": hex_of(key.key),
        "key_commitment_hex": hex_of(commitment),
        "kid": key.kid,
        "members_digest_input": text_of(digest_input),
        "members_digest": st.members_digest,
        "statement": text_of(canonical_json(st.model_dump(mode="json"))),
        "signing_input": text_of(
            b"istmo/v1/group-epoch\x00" + canonical_json(st.model_dump(mode="json"))
        ),
        "signed_epoch": text_of(canonical_json(signed.model_dump(mode="json"))),
        "member_wraps": entries,
        "other_epoch": {"epoch": other.epoch, "kid": other.kid, "epoch_key_hex": hex_of(other.key)},
    }


def group_wrap_trace(gw: GroupWrap, hd: bytes, content_key: bytes) -> dict[str, Any]:
    """One group wrap of an envelope opened step by step (with the epoch key it names)."""
    key = epoch_key(gw.epoch)
    if key.kid != gw.kid:
        raise ValueError(f"group wrap of {gw.group} names another key")
    aad = (
        b"istmo/v1/group-content\x00"
        + hd
        + b"\x00"
        + gw.group.encode()
        + b"\x00"
        + str(gw.epoch).encode()
    )
    plain = AESGCM(key.key).decrypt(base64.b64decode(gw.nonce), base64.b64decode(gw.ct), aad)
    if plain != content_key or open_group_wrap(gw, key, hd) != content_key:
        raise ValueError(f"group wrap of {gw.group} opens to another key")
    return {
        "group": gw.group,
        "epoch": gw.epoch,
        "kid": gw.kid,
        "epoch_key_hex": hex_of(key.key),
        "aad_hex": hex_of(aad),
        "content_key_hex": hex_of(plain),
    }


def group_exchanges(groups: dict[str, Any]) -> list[tuple[str, str, bytes, bytes]]:
    """The group operations, one exchange each (caller, op, request, reply), and two
    refusals."""
    signed = _signed()
    wraps = {w["agency"]: MemberWrap.model_validate_json(w["wrap"]) for w in groups["member_wraps"]}
    info = GroupInfo(
        name=GROUP,
        manager=MANAGER,
        jurisdiction="SICA",
        topic="drug-trafficking",
        min_clearance=1,
        epoch=signed,
    )
    roster = tuple(RosterMember(agency=m, kid=encryption_key(m).public_key.kid) for m in MEMBERS)
    post = EpochPost(epoch=signed, members=MEMBERS, wraps=tuple(wraps.values()))
    return [
        (
            "gt-police",
            "groups",
            encode_request(GroupsRequest()),
            encode_reply(GroupsReply(groups=(info,))),
        ),
        (
            "gt-police",
            "groups",
            encode_request(GroupsRequest(names=(GROUP,))),
            encode_reply(GroupsReply(groups=(info.model_copy(update={"members": MEMBERS}),))),
        ),
        (
            MANAGER,
            "group-roster",
            encode_request(RosterRequest(group=GROUP)),
            encode_reply(RosterReply(group=GROUP, current=EPOCH, due=False, members=roster)),
        ),
        (
            MANAGER,
            "group-epoch",
            encode_request(post),
            encode_reply(
                EpochPostReply(group=GROUP, epoch=EPOCH, stored=3, missing=0, current=True)
            ),
        ),
        (
            "gt-police",
            "group-keys",
            encode_request(GroupKeysRequest(wanted=(EpochRef(group=GROUP, epoch=EPOCH),))),
            encode_reply(GroupKeysReply(keys=(HeldKey(epoch=signed, wrap=wraps["gt-police"]),))),
        ),
        (
            "gt-police",
            "group-roster",
            encode_request(RosterRequest(group=GROUP)),
            encode_reply(
                ErrorReply.of("not_group_manager", f"only the manager of group {GROUP} may do this")
            ),
        ),
        (
            MANAGER,
            "group-epoch",
            encode_request(post),
            encode_reply(
                ErrorReply.of(
                    "roster_changed",
                    f"the members of {GROUP} changed: ask for its roster again and post the "
                    "next epoch",
                )
            ),
        ),
    ]
