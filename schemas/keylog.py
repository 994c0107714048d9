"""Keys in the audit log (ADR 28): what a key entry commits to, the ``key-log`` request and
its answer, and the checks an SDK and an agency's monitor make. Pure: no I/O.

Every key registered to an agency (enrolment, rotation, re-enrolment, a backfill of keys
from before ADR 28) is a ``key.registered`` entry of the audit log whose data names the
key id, its use, and ``key_sha256``: the SHA-256 of the public key bytes. Rotation,
revocation and status changes are entries already (``key.rotated``, ``key.revoked``,
``agency.suspended``...). An SDK seals for a recipient's key only after it checked, with an
RFC 9162 inclusion proof, that such an entry for that agency, key id and key digest is in
the log under a checkpoint cosigned by its witness quorum (ADR 24), or, in a deployment
without witnesses, under a tree head signed by the pinned log key (``KeyLogTrust``).

Inclusion says the key is *in the log*, where the agency's own monitor sees it
(``own_key_alarms``): an operator cannot substitute a key unseen. It does not say the key
is the agency's latest, nor that the agency made it; that is the monitor's part.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schemas.audit import AuditEvent
from schemas.canonical import b64d, canonical_json
from schemas.checkpoint import NOTE_ALG, CosignerKey, WitnessTrust, parse_note
from schemas.envelope import Kid
from schemas.errors import EnvelopeError, SignatureError
from schemas.ids import AgencyIdStr
from schemas.keys import VerifyKey
from schemas.merkle_verify import ProofError, leaf_hash, verify_inclusion
from schemas.treehead import SignedTreeHead, verify_tree_head

__all__ = [
    "MAX_KEY_ENTRIES",
    "MAX_KEY_LOG_AGENCIES",
    "MAX_LEAF_BYTES",
    "KeyEntry",
    "KeyLogProof",
    "KeyLogReply",
    "KeyLogRequest",
    "KeyLogTrust",
    "KeyNotLogged",
    "KeyNotWitnessedYet",
    "KeyRef",
    "LoggedHead",
    "OwnKey",
    "check_key_entry",
    "key_sha256",
    "logged_head",
    "own_key_alarms",
    "parse_key_entry",
]

MAX_KEY_LOG_AGENCIES = 100  # agencies one key-log request names (a page of records)
MAX_KEY_ENTRIES = 64  # newest key entries answered per agency
MAX_LEAF_BYTES = 8192
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
Hash64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}=$")]
LeafB64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=11_000)]


def key_sha256(public: bytes) -> str:
    """What a key entry commits to: the SHA-256 of the raw public key bytes, hex."""
    return hashlib.sha256(public).hexdigest()


class KeyNotLogged(SignatureError):
    """A recipient's key has no entry in the audit log this SDK can check: not sealed for."""

    default_code = "key_not_logged"


class KeyNotWitnessedYet(KeyNotLogged):
    """A key's entry is in the log but not yet under the checkpoint checked against."""


# ---------------------------------------------------------------------- the wire
class KeyRef(BaseModel):
    """One agency's key, by id."""

    model_config = _STRICT

    agency: AgencyIdStr
    kid: Kid


class KeyLogRequest(BaseModel):
    """``key-log``: the registration entries of these keys (an SDK about to seal for
    them), or with ``mine``, the newest ``MAX_KEY_ENTRIES`` key entries of the caller
    itself (its monitor), each with its inclusion proof."""

    model_config = _STRICT

    keys: tuple[KeyRef, ...] = Field(default=(), max_length=MAX_KEY_LOG_AGENCIES)
    mine: bool | None = None


class KeyLogProof(BaseModel):
    """One key entry: its index, its bytes as the log hashed them, and the inclusion proof
    of it in the tree of ``tree_size`` (the checkpoint's size when the checkpoint covers
    it, else the latest signed tree head's)."""

    model_config = _STRICT

    index: Annotated[int, Field(ge=0, le=2**53 - 1)]
    tree_size: Annotated[int, Field(ge=1, le=2**53 - 1)]
    leaf: LeafB64
    proof: tuple[Hash64, ...] = Field(max_length=64)


class KeyLogReply(BaseModel):
    """The answer to ``key-log``: the latest checkpoint with the witness quorum (a C2SP
    signed note; None before one, or without witnesses), the latest signed tree head (None
    for an empty log), and the entries asked for, by index."""

    model_config = _STRICT

    v: Literal[1]
    checkpoint: Annotated[str, StringConstraints(max_length=16_384)] | None
    tree_head: SignedTreeHead | None
    entries: tuple[KeyLogProof, ...] = Field(max_length=4 * MAX_KEY_LOG_AGENCIES)


# ---------------------------------------------------------------------- what an SDK trusts
@dataclass(frozen=True)
class KeyLogTrust:
    """The log an SDK checks recipients' keys against.

    ``witnesses`` set: a key counts only with an entry under a checkpoint the pinned log
    key signed and ``witnesses.quorum`` trusted witnesses cosigned. None: under a tree head
    signed by the pinned log key (a deployment without witnesses; see ADR 28 for what that
    does not stop), which must be asked for with ``log_key_alone=True``.

    Raises:
        ValueError: no witnesses without ``log_key_alone``, or witnesses with it.
    """

    log_key: VerifyKey
    origin: str
    witnesses: WitnessTrust | None = None
    log_key_alone: bool = False

    def __post_init__(self) -> None:
        if (self.witnesses is None) != self.log_key_alone:
            raise ValueError(
                "a key-log trust needs the witnesses, or log_key_alone=True to accept a tree "
                "head on the log key alone (it does not stop whoever holds that key)"
                if self.witnesses is None
                else "a key-log trust with witnesses cannot also be log_key_alone"
            )

    @property
    def mode(self) -> str:
        return "witnessed" if self.witnesses is not None else "signed-head"


@dataclass(frozen=True)
class LoggedHead:
    """A tree the SDK verified: its size and root."""

    size: int
    root: bytes
    witnessed: bool


def logged_head(reply: KeyLogReply, trust: KeyLogTrust) -> LoggedHead | None:
    """The tree the reply's proofs may be checked against, verified: the checkpoint with
    the quorum (witnessed mode), or the signed tree head (signed-head mode). None when the
    reply has none (the proofs then prove nothing).

    Raises:
        SignatureError: a checkpoint or tree head that does not verify (code
            ``key_log_untrusted``), or too few cosignatures (``quorum_missing``).
    """
    try:
        if trust.witnesses is not None:
            if reply.checkpoint is None:
                return None
            note = parse_note(reply.checkpoint.encode())
            cp, _good = trust.witnesses.verify(
                note, CosignerKey(trust.origin, trust.log_key, NOTE_ALG)
            )
            return LoggedHead(cp.size, cp.root, True)
        if reply.tree_head is None:
            return None
        head = verify_tree_head(reply.tree_head, trust.log_key, trust.origin)
        return LoggedHead(head.tree_size, head.root(), False)
    except SignatureError as exc:
        if exc.code == "quorum_missing":
            raise
        raise SignatureError(
            f"the audit log's head in the key-log answer does not verify: {exc}",
            code="key_log_untrusted",
        ) from exc
    except EnvelopeError as exc:
        raise SignatureError(
            f"the audit log's checkpoint in the key-log answer is malformed: {exc}",
            code="key_log_untrusted",
        ) from exc


# ---------------------------------------------------------------------- one entry
@dataclass(frozen=True)
class KeyEntry:
    """A ``key.registered`` entry, as the checks read it."""

    index: int
    agency: str
    kid: str
    use: str
    sha256: str | None  # None: an entry from before ADR 28
    actor: str
    how: str | None


def parse_key_entry(index: int, leaf: bytes) -> KeyEntry | None:
    """The key entry ``leaf`` holds, or None when it is another kind of entry.

    Raises:
        EnvelopeError: not a canonical audit event (a log that serves such bytes is broken).
    """
    if len(leaf) > MAX_LEAF_BYTES:
        raise EnvelopeError(f"entry {index} is larger than a key entry can be")
    try:
        event = AuditEvent.model_validate_json(leaf)
        value: Any = json.loads(leaf)
    except (ValidationError, ValueError, RecursionError) as exc:
        raise EnvelopeError(f"entry {index} is not an audit event") from exc
    if canonical_json(value) != leaf:
        raise EnvelopeError(f"entry {index} is not canonical JSON")
    if event.type != "key.registered":
        return None
    data = event.data
    kid, use, sha = data.get("kid"), data.get("use"), data.get("key_sha256")
    how = data.get("how")
    if not isinstance(kid, str) or not isinstance(use, str):
        raise EnvelopeError(f"entry {index} is a key entry without a key id and use")
    return KeyEntry(
        index,
        event.subject or "",
        kid,
        use,
        sha if isinstance(sha, str) else None,
        event.actor,
        how if isinstance(how, str) else None,
    )


def check_key_entry(
    item: KeyLogProof, head: LoggedHead, *, agency: str, kid: str, public: bytes, use: str
) -> KeyEntry | None:
    """Check that ``item`` proves ``agency``'s key ``kid`` (``public``) is in the log.

    Steps:
      1. the leaf is a canonical audit event (``KeyNotLogged`` otherwise); one that is not
         the ``key.registered`` event of this agency, key id and use, or names no digest
         (an entry from before ADR 28), proves nothing about this key: None;
      2. it commits to ``key_sha256(public)``: ``KeyNotLogged`` otherwise (the directory
         serves other key material than was logged under that id);
      3. its proof is against ``head`` (the verified tree): ``KeyNotWitnessedYet``
         otherwise (an entry newer than the checkpoint);
      4. the inclusion proof leads from the leaf's hash at its index to ``head``'s root:
         ``KeyNotLogged`` otherwise.
    """
    where = f"{agency}'s key {kid}"
    try:
        leaf = b64d(item.leaf, field="leaf", max_bytes=MAX_LEAF_BYTES)
        entry = parse_key_entry(item.index, leaf)
    except EnvelopeError as exc:
        raise KeyNotLogged(f"{where}: {exc}") from exc
    if entry is None or entry.agency != agency or entry.kid != kid or entry.use != use:
        return None
    if entry.sha256 is None:
        return None  # from before ADR 28: proves no key material (its backfill entry does)
    if entry.sha256 != key_sha256(public):
        raise KeyNotLogged(
            f"{where}: entry {item.index} registers other key material than the directory "
            "record holds"
        )
    if item.tree_size != head.size:
        raise KeyNotWitnessedYet(
            f"{where}: entry {item.index} is proven in a tree of size {item.tree_size}, "
            f"not in the {'witnessed ' if head.witnessed else ''}one of size {head.size}"
        )
    try:
        proof = [b64d(p, field="proof", max_bytes=32) for p in item.proof]
        verify_inclusion(leaf_hash(leaf), item.index, head.size, proof, head.root)
    except (ProofError, EnvelopeError) as exc:
        raise KeyNotLogged(
            f"{where}: the inclusion proof of entry {item.index} fails: {exc}"
        ) from exc
    return entry


# ---------------------------------------------------------------------- the monitor
@dataclass(frozen=True)
class OwnKey:
    """A public key the agency holds the private half of (from its keystore)."""

    kid: str
    use: str
    public: bytes


def own_key_alarms(agency: str, entries: Iterable[KeyEntry], own: Sequence[OwnKey]) -> list[str]:
    """An alarm for each key entry for ``agency`` that names a key it does not hold.

    A ``key.registered`` entry for the agency is its own when its key id is one the
    keystore holds, with the same ``key_sha256`` (an entry from before ADR 28 has no digest
    and is matched by id, which is itself a hash of the key). A NATS user is judged only
    when ``own`` names one.
    """
    mine = {(k.use, k.kid): key_sha256(k.public) for k in own}
    alarms = []
    for e in entries:
        if e.agency != agency or (e.use == "nats" and not any(k.use == "nats" for k in own)):
            continue
        held = mine.get((e.use, e.kid))
        if held is None:
            alarms.append(
                f"entry {e.index}: {e.use} key {e.kid} registered to {agency} by "
                f"{e.actor}{f' ({e.how})' if e.how else ''} is not in this keystore"
            )
        elif e.sha256 is not None and e.sha256 != held:
            alarms.append(
                f"entry {e.index}: {e.use} key {e.kid} registered to {agency} with other "
                "key material than this keystore holds"
            )
    return alarms
