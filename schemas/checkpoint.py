"""C2SP checkpoints, signed notes and Ed25519 cosignatures: the witnessed audit log's wire format.

    checkpoint body      "<origin>\\n<tree size>\\n<base64 root>\\n"   (c2sp.org/tlog-checkpoint)
    signed note          body, "\\n", then lines "— <key name> <base64(key id || sig)>\\n"
                                                                        (c2sp.org/signed-note)
    log signature        Ed25519 over the body; key id SHA-256(name || "\\n" || 0x01 || pub)[:4]
    cosignature/v1       key id SHA-256(name || "\\n" || 0x04 || pub)[:4]; sig = u64 timestamp
                         (big-endian, POSIX seconds) || Ed25519 over
                         "cosignature/v1\\ntime <t>\\n" || body          (c2sp.org/tlog-cosignature)
    add-checkpoint body  "old <size>\\n", up to 63 base64 proof lines, "\\n", the signed note
                                                                        (c2sp.org/tlog-witness)

The log signs its checkpoints with the same log key as its tree heads, under the key name
``origin``. A checkpoint means nothing until ``verify_checkpoint`` has checked the log's
signature and a quorum of cosignatures from the witness keys the caller trusts: unknown
signature lines are ignored, as the spec says, never counted.

Pure: bytes and keys in, values out; the witness (``broker.audit.witness``) and the
publisher (``broker.audit.witnessing``) do the I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import SigningKey, VerifyKey

__all__ = [
    "AUDIT_WITNESSES_ENV",
    "COSIGNATURE_ALG",
    "LOG_KEY_ALONE_FLAG",
    "LOG_KEY_ALONE_WARNING",
    "MAX_NOTE_BYTES",
    "MAX_PROOF_LINES",
    "NOTE_ALG",
    "AddCheckpoint",
    "Checkpoint",
    "CosignerKey",
    "NoteSignature",
    "QuorumMissing",
    "SignedNote",
    "WitnessEndpoint",
    "WitnessTrust",
    "cosign",
    "format_add_checkpoint",
    "format_vkey",
    "key_id",
    "parse_add_checkpoint",
    "parse_checkpoint",
    "parse_note",
    "parse_signature_lines",
    "parse_vkey",
    "required_trust",
    "sign_checkpoint",
    "trust_from_options",
    "verify_checkpoint",
    "verify_cosignature",
    "verify_log_signature",
]

NOTE_ALG = 0x01  # Ed25519 signed-note signature
COSIGNATURE_ALG = 0x04  # Ed25519 cosignature/v1
MAX_NOTE_BYTES = 16_384
MAX_SIGNATURES = 64
MAX_PROOF_LINES = 63
_EM_DASH = "\u2014"
_NAME = re.compile(r"^[\x21-\x2a\x2c-\x7e]{1,128}$")  # printable ASCII, no "+" and no space
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_COSIG_HEADER = b"cosignature/v1\n"


class QuorumMissing(SignatureError):
    """A checkpoint lacks the cosignatures its verifier requires."""

    default_code = "quorum_missing"


def _b64(text: str, what: str, *, size: int | None = None) -> bytes:
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise EnvelopeError(f"{what} is not valid base64", code="malformed") from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise EnvelopeError(f"{what} is not canonical base64", code="malformed")
    if size is not None and len(data) != size:
        raise EnvelopeError(f"{what} is {len(data)} bytes, want {size}", code="malformed")
    return data


def _decimal(text: str, what: str) -> int:
    if not _DECIMAL.match(text) or int(text) > 2**63 - 1:
        raise EnvelopeError(f"{what} is not a decimal without leading zeroes", code="malformed")
    return int(text)


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise EnvelopeError("a key name is 1-128 printable characters, no '+'", code="malformed")
    return name


def key_id(name: str, alg: int, public: bytes) -> bytes:
    """The 4-byte key id of a signed-note key: SHA-256(name || "\\n" || alg || public)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


@dataclass(frozen=True)
class CosignerKey:
    """A trusted key: a name, an Ed25519 public key and the signature type it makes."""

    name: str
    key: VerifyKey
    alg: int = COSIGNATURE_ALG

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.key.public)


def format_vkey(k: CosignerKey) -> str:
    """The signed-note verifier key ``<name>+<hex key id>+<base64(alg || public)>``."""
    material = base64.b64encode(bytes([k.alg]) + k.key.public).decode()
    return f"{k.name}+{k.key_id.hex()}+{material}"


def parse_vkey(text: str) -> CosignerKey:
    """Parse a verifier key (types 0x01 and 0x04 only) and check its key id.

    Raises:
        EnvelopeError: malformed, another type, or a key id that does not match.
    """
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise EnvelopeError("a verifier key is <name>+<8 hex digits>+<base64>", code="malformed")
    name = _check_name(parts[0])
    raw = _b64(parts[2], "verifier key", size=33)
    if raw[0] not in (NOTE_ALG, COSIGNATURE_ALG):
        raise EnvelopeError(f"verifier key type 0x{raw[0]:02x} is not Ed25519", code="malformed")
    k = CosignerKey(name, VerifyKey(raw[1:]), raw[0])
    if k.key_id.hex() != parts[1]:
        raise EnvelopeError(f"verifier key {name}: the key id does not match", code="malformed")
    return k


@dataclass(frozen=True)
class Checkpoint:
    """A tree head in checkpoint form: the log's origin, its size and its root hash."""

    origin: str
    size: int
    root: bytes

    def body(self) -> bytes:
        """The note body: three newline-terminated lines."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n".encode()


def parse_checkpoint(body: bytes) -> Checkpoint:
    """Parse a checkpoint body (extension lines refused: Istmo's log writes none).

    Raises:
        EnvelopeError: not three lines of origin, decimal size, base64 32-byte hash.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("checkpoint is not UTF-8", code="malformed") from exc
    lines = text.split("\n")
    if len(lines) != 4 or lines[3] != "":
        raise EnvelopeError("a checkpoint body is three lines", code="malformed")
    origin = _check_name(lines[0])
    return Checkpoint(origin, _decimal(lines[1], "tree size"), _b64(lines[2], "root hash", size=32))


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key name, the 4-byte key id and the signature bytes."""

    name: str
    key_id: bytes
    sig: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.sig).decode()
        return f"{_EM_DASH} {self.name} {blob}\n"


@dataclass(frozen=True)
class SignedNote:
    """A note body and its signature lines, in order."""

    body: bytes
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        return self.body + b"\n" + "".join(s.line() for s in self.signatures).encode()

    def checkpoint(self) -> Checkpoint:
        return parse_checkpoint(self.body)

    def with_signatures(self, more: Iterable[NoteSignature]) -> SignedNote:
        """This note with ``more`` appended, dropping exact duplicates."""
        sigs = list(self.signatures)
        for s in more:
            if s not in sigs:
                sigs.append(s)
        return SignedNote(self.body, tuple(sigs))


def parse_signature_lines(text: str) -> list[NoteSignature]:
    """Parse newline-terminated signature lines (a note's tail, or a witness's answer).

    Raises:
        EnvelopeError: a line that is not ``— <name> <base64>``, or too many.
    """
    if not text.endswith("\n"):
        raise EnvelopeError("signature lines end with a newline", code="malformed")
    out: list[NoteSignature] = []
    for line in text[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH:
            raise EnvelopeError("a signature line is '— <name> <base64>'", code="malformed")
        blob = _b64(parts[2], f"signature of {_check_name(parts[1])}")
        if len(blob) < 5:
            raise EnvelopeError(f"signature of {parts[1]} is too short", code="malformed")
        out.append(NoteSignature(parts[1], blob[:4], blob[4:]))
        if len(out) > MAX_SIGNATURES:
            raise EnvelopeError(f"more than {MAX_SIGNATURES} signatures", code="oversized")
    return out


def parse_note(raw: bytes) -> SignedNote:
    """Split a signed note into its body and signature lines (nothing verified yet).

    Raises:
        EnvelopeError: oversized, not UTF-8, no blank line before the signatures, or a
            malformed signature line.
    """
    if len(raw) > MAX_NOTE_BYTES:
        raise EnvelopeError(f"signed note is over {MAX_NOTE_BYTES} bytes", code="oversized")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("signed note is not UTF-8", code="malformed") from exc
    cut = text.rfind("\n\n")
    if cut < 0:
        raise EnvelopeError("signed note has no blank line before its signatures", code="malformed")
    body, tail = text[: cut + 1], text[cut + 2 :]
    sigs = parse_signature_lines(tail)
    if not sigs:
        raise EnvelopeError("signed note has no signature", code="malformed")
    return SignedNote(body.encode(), tuple(sigs))


def sign_checkpoint(cp: Checkpoint, key: SigningKey) -> SignedNote:
    """The log's signed note of ``cp``, signed under the key name ``cp.origin``."""
    body = cp.body()
    kid = key_id(cp.origin, NOTE_ALG, key.verify_key.public)
    return SignedNote(body, (NoteSignature(cp.origin, kid, key.sign(body)),))


def _cosigned_message(timestamp: int, body: bytes) -> bytes:
    return _COSIG_HEADER + f"time {timestamp}\n".encode() + body


def cosign(body: bytes, name: str, key: SigningKey, timestamp: int) -> NoteSignature:
    """A cosignature/v1 line by cosigner ``name`` over a checkpoint ``body`` at ``timestamp``
    (POSIX seconds)."""
    if not 0 <= timestamp <= 2**63 - 1:
        raise ValueError("cosignature timestamp out of range")
    sig = key.sign(_cosigned_message(timestamp, body))
    kid = key_id(_check_name(name), COSIGNATURE_ALG, key.verify_key.public)
    return NoteSignature(name, kid, timestamp.to_bytes(8, "big") + sig)


def _find(note: SignedNote, k: CosignerKey) -> list[NoteSignature]:
    return [s for s in note.signatures if s.name == k.name and s.key_id == k.key_id]


def verify_log_signature(note: SignedNote, log: CosignerKey) -> Checkpoint:
    """Check the log's signature on ``note`` and that its origin is the log's name.

    Raises:
        SignatureError: no signature by the log key (``unknown_key``), one that does not
            verify, or a checkpoint of another log (``origin_mismatch``).
        EnvelopeError: the body is not a checkpoint.
    """
    cp = note.checkpoint()
    if cp.origin != log.name:
        raise SignatureError(
            f"checkpoint is for log {cp.origin!r}, not {log.name!r}", code="origin_mismatch"
        )
    found = _find(note, log)
    if not found:
        raise SignatureError("checkpoint is not signed by the log key", code="unknown_key")
    for s in found:
        log.key.verify(s.sig, note.body)
    return cp


def verify_cosignature(note: SignedNote, k: CosignerKey) -> int | None:
    """The timestamp of a valid cosignature by ``k`` on ``note``, None when there is none.

    Raises:
        SignatureError: a line names ``k`` and its key id but does not verify.
    """
    for s in _find(note, k):
        if len(s.sig) != 72:
            raise SignatureError(f"cosignature of {k.name} is {len(s.sig)} bytes, want 72")
        ts = int.from_bytes(s.sig[:8], "big")
        if ts > 2**63 - 1:
            raise SignatureError(f"cosignature of {k.name} has a timestamp out of range")
        k.key.verify(s.sig[8:], _cosigned_message(ts, note.body))
        return ts
    return None


def verify_checkpoint(
    note: SignedNote, log: CosignerKey, witnesses: Sequence[CosignerKey], quorum: int
) -> tuple[Checkpoint, list[str]]:
    """Check the log's signature and at least ``quorum`` cosignatures by ``witnesses``.

    Args:
        note: the parsed signed note.
        log: the log's key (name = origin, type 0x01).
        witnesses: the witness keys the caller trusts (type 0x04); others are ignored.
        quorum: how many of them must have cosigned (``k`` of ``n``).

    Returns:
        The checkpoint and the names of the witnesses whose cosignatures verified.

    Raises:
        SignatureError: as ``verify_log_signature``.
        QuorumMissing: fewer than ``quorum`` valid cosignatures; the message names the
            witnesses that did cosign and those missing or failing.
    """
    if not 0 <= quorum <= len(witnesses):
        raise ValueError(f"quorum {quorum} of {len(witnesses)} witnesses")
    cp = verify_log_signature(note, log)
    good: list[str] = []
    missing: list[str] = []
    for w in witnesses:
        try:
            ts = verify_cosignature(note, w)
        except SignatureError:
            missing.append(f"{w.name} (signature does not verify)")
            continue
        if ts is None:
            missing.append(f"{w.name} (no cosignature)")
        else:
            good.append(w.name)
    if len(good) < quorum:
        have = ", ".join(good) or "none"
        raise QuorumMissing(
            f"checkpoint at size {cp.size} has {len(good)} of the {quorum} witness "
            f"cosignatures required (cosigned: {have}; missing: {', '.join(missing)})"
        )
    return cp, good


@dataclass(frozen=True)
class AddCheckpoint:
    """A tlog-witness add-checkpoint request: the size the log believes the witness has,
    a consistency proof from it, and the signed checkpoint."""

    old_size: int
    proof: tuple[bytes, ...]
    note: SignedNote


def format_add_checkpoint(req: AddCheckpoint) -> bytes:
    lines = [f"old {req.old_size}\n"] + [base64.b64encode(h).decode() + "\n" for h in req.proof]
    return "".join(lines).encode() + b"\n" + req.note.encode()


def parse_add_checkpoint(raw: bytes) -> AddCheckpoint:
    """Parse an add-checkpoint body.

    Raises:
        EnvelopeError: oversized, malformed, more than 63 proof lines, or a proof that is
            not empty for old size 0.
    """
    if len(raw) > MAX_NOTE_BYTES + 64 * (MAX_PROOF_LINES + 1):
        raise EnvelopeError("add-checkpoint request is too large", code="oversized")
    cut = raw.find(b"\n\n")
    if cut < 0:
        raise EnvelopeError(
            "add-checkpoint has no blank line before the checkpoint", code="malformed"
        )
    try:
        head = raw[: cut + 1].decode("ascii").split("\n")[:-1]
    except UnicodeDecodeError as exc:
        raise EnvelopeError("add-checkpoint header is not ASCII", code="malformed") from exc
    if not head or not head[0].startswith("old "):
        raise EnvelopeError("add-checkpoint starts with 'old <size>'", code="malformed")
    old = _decimal(head[0][4:], "old size")
    if len(head) - 1 > MAX_PROOF_LINES:
        raise EnvelopeError(f"more than {MAX_PROOF_LINES} proof lines", code="oversized")
    proof = tuple(_b64(line, f"proof hash {i}", size=32) for i, line in enumerate(head[1:]))
    if old == 0 and proof:
        raise EnvelopeError("a proof from size 0 is empty", code="malformed")
    return AddCheckpoint(old, proof, parse_note(raw[cut + 2 :]))


# ------------------------------------------------------------------ whom a verifier trusts
MAX_TRUST_BYTES = 65_536


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness: its cosigning key, and for the log that asks it, its URL."""

    key: CosignerKey
    url: str | None = None


@dataclass(frozen=True)
class WitnessTrust:
    """The witnesses whose cosignatures count, and how many are required (k of n)."""

    witnesses: tuple[WitnessEndpoint, ...]
    quorum: int

    @property
    def keys(self) -> list[CosignerKey]:
        return [w.key for w in self.witnesses]

    def verify(self, note: SignedNote, log: CosignerKey) -> tuple[Checkpoint, list[str]]:
        """``verify_checkpoint`` with these witnesses and this quorum."""
        return verify_checkpoint(note, log, self.keys, self.quorum)


def _witness_key(name: str, text: str) -> CosignerKey:
    """A witness key from a verifier key (named ``name``) or a base64 Ed25519 public key."""
    text = text.strip()
    if text.startswith(name + "+"):
        k = parse_vkey(text)
        if k.alg != COSIGNATURE_ALG:
            raise EnvelopeError(f"the key of witness {name} is not a cosignature key (0x04)")
        return k
    return CosignerKey(_check_name(name), VerifyKey(_b64(text, f"key of witness {name}", size=32)))


def _quorum(quorum: int | None, n: int, where: str) -> int:
    k = n if quorum is None else quorum
    if not 1 <= k <= n:
        raise ConfigError(f"quorum {k} of {n} witnesses in {where}: want 1..{n}")
    return k


def _parse_trust_file(raw: bytes, where: str) -> tuple[list[WitnessEndpoint], int | None]:
    if len(raw) > MAX_TRUST_BYTES:
        raise ConfigError(f"witnesses file {where} is over {MAX_TRUST_BYTES} bytes")
    try:
        doc = json.loads(raw)
        ends = [
            WitnessEndpoint(_witness_key(str(w["name"]), str(w["key"])), w.get("url"))
            for w in doc["witnesses"]
        ]
        quorum = doc.get("quorum")
        if quorum is not None and not isinstance(quorum, int):
            raise TypeError("quorum is not an integer")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"cannot read the witnesses file {where}: {exc}",
            hint='it holds {"quorum": K, "witnesses": [{"name": …, "key": …, "url": …}]}',
        ) from exc
    return ends, quorum


def trust_from_options(
    pairs: Sequence[str],
    quorum: int | None,
    file: tuple[bytes, str] | None = None,
) -> WitnessTrust | None:
    """The witnesses a verifier requires: ``--witness NAME=KEY`` options, ``--quorum`` and a
    trust file's contents (``(bytes, its name for messages)``); None when none is given.

    The quorum defaults to the file's, else to every witness given.

    Raises:
        ConfigError: a malformed option or file, a witness named twice, or a quorum
            outside 1..n.
    """
    ends: list[WitnessEndpoint] = []
    file_quorum = None
    if file is not None:
        ends, file_quorum = _parse_trust_file(*file)
    for pair in pairs:
        name, sep, key = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--witness {pair[:80]!r}: want NAME=KEY")
        try:
            ends.append(WitnessEndpoint(_witness_key(name, key)))
        except EnvelopeError as exc:
            raise ConfigError(f"--witness {name[:64]}: {exc}") from exc
    if not ends:
        if quorum is not None:
            raise ConfigError("--quorum needs --witness or --witnesses")
        return None
    if len({w.key.name for w in ends}) != len(ends):
        raise ConfigError("a witness is named twice")
    if quorum is None:
        quorum = file_quorum if not pairs else None
    where = file[1] if file is not None else "the options"
    return WitnessTrust(tuple(ends), _quorum(quorum, len(ends), where))


# ------------------------------------------------- a verifier without witnesses (ADR 24)
AUDIT_WITNESSES_ENV = "ISTMO_AUDIT_WITNESSES"
LOG_KEY_ALONE_FLAG = "--trust-log-key-alone"
LOG_KEY_ALONE_WARNING = (
    f"istmo: WARNING: checked on the log key alone ({LOG_KEY_ALONE_FLAG}): this does not "
    "protect against whoever holds the log key, who can truncate the log and re-sign its "
    "heads; give the witnesses you trust with --witnesses FILE"
)
_NO_WITNESS_HINT = (
    f"for a log without witnesses, {LOG_KEY_ALONE_FLAG} checks it on the log key alone, "
    "which does not stop whoever holds that key"
)


def required_trust(
    pairs: Sequence[str],
    quorum: int | None,
    file: tuple[bytes, str] | None,
    *,
    log_key_alone: bool,
    default: tuple[bytes, str] | None = None,
    looked: str = f"${AUDIT_WITNESSES_ENV} is not set",
) -> WitnessTrust | None:
    """The witness trust a verifier of the audit log requires: refused unless it is given.

    From ``--witness``/``--quorum`` and a trust file (as ``trust_from_options``), else from
    ``default`` (a trust file the caller found: ``$ISTMO_AUDIT_WITNESSES``, or a local data
    directory's). None only with ``log_key_alone`` (``--trust-log-key-alone``), the
    explicit opt-out, which takes no witness option.

    Args:
        looked: where the caller looked for a default, for the error message.

    Raises:
        ConfigError: no trust and no opt-out (code ``witnesses_required``); a trust file
            without witnesses; the opt-out together with witnesses; as ``trust_from_options``.
    """
    given = bool(pairs) or file is not None or quorum is not None
    if log_key_alone:
        if given:
            raise ConfigError(
                f"{LOG_KEY_ALONE_FLAG} and --witness/--witnesses/--quorum contradict each "
                "other: give the witnesses, or the opt-out"
            )
        return None
    source = file if given else default
    trust = trust_from_options(pairs, quorum, file) if given else None
    if trust is None and source is not None:
        trust = trust_from_options([], None, source)
        if trust is None:
            raise ConfigError(
                f"the witnesses file {source[1]} names no witnesses", hint=_NO_WITNESS_HINT
            )
    if trust is None:
        raise ConfigError(
            "no witnesses to check the audit log against (" + looked + "): pass --witnesses "
            "FILE or --witness NAME=KEY --quorum K, or name your trust file in "
            f"${AUDIT_WITNESSES_ENV}",
            code="witnesses_required",
            hint=_NO_WITNESS_HINT,
        )
    return trust
