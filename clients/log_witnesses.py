"""The witness quorum of a remote audit log: what ``istmo audit verify --from-url``
requires (``--witness NAME=KEY``, ``--witnesses FILE``, ``--quorum K``, or the trust file
``$ISTMO_AUDIT_WITNESSES`` names; refused without, unless ``--trust-log-key-alone``).

A log that verifies against its own signed heads may still have been truncated and
re-signed by someone holding its key. Witnesses at other ministries cosigned its
checkpoints only after checking each extends the last (c2sp.org/tlog-witness), so:

1. the log serves its latest cosigned checkpoint (``GET /v1/audit/checkpoint``);
2. the checkpoint carries the pinned log key's signature and at least ``quorum`` valid
   cosignatures from the trusted witness keys (others are ignored);
3. the log has a signed head at the checkpoint's size (verified under the pinned key) with
   the same root. A cosigned size the log has no head for means it was truncated; another
   root there means its history was rewritten;
4. when the live log grew past the verified head during the check, a consistency proof
   shows the verified tree is a prefix of the cosigned one.

Uses ``schemas`` and ``clients`` only, like the rest of the remote verifier.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clients.audit_api import AuditApi, LogAltered, RemoteLogError
from schemas.canonical import b64e
from schemas.checkpoint import (
    AUDIT_WITNESSES_ENV,
    NOTE_ALG,
    CosignerKey,
    QuorumMissing,
    WitnessTrust,
    parse_note,
    required_trust,
)
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import VerifyKey
from schemas.merkle_verify import ProofError, verify_consistency
from schemas.treehead import parse_signed_tree_head, verify_tree_head

__all__ = ["check_witnessed", "witness_trust"]


def _read(path: Path, said: str = "") -> tuple[bytes, str]:
    try:
        return path.read_bytes(), f"{path}{said}"
    except OSError as exc:
        raise ConfigError(f"cannot read the witnesses file {path}{said}") from exc


def witness_trust(
    witness: list[str], quorum: int | None, file: Path | None, *, log_key_alone: bool = False
) -> WitnessTrust | None:
    """The witnesses ``verify --from-url`` requires: from the options, else from the trust
    file ``$ISTMO_AUDIT_WITNESSES`` names. None only with ``log_key_alone``
    (``--trust-log-key-alone``). A remote auditor has no broker data directory to fall
    back on, and should not: the witnesses must be the auditor's own choice.

    Raises:
        ConfigError: no witnesses and no opt-out (code ``witnesses_required``); an
            unreadable or malformed file or option, or a bad quorum.
    """
    raw = _read(file) if file is not None else None
    given = bool(witness) or file is not None or quorum is not None
    env = os.environ.get(AUDIT_WITNESSES_ENV, "")
    default = (
        _read(Path(env), f" (${AUDIT_WITNESSES_ENV})")
        if env and not given and not log_key_alone
        else None
    )
    return required_trust(witness, quorum, raw, log_key_alone=log_key_alone, default=default)


async def check_witnessed(
    api: AuditApi,
    key: VerifyKey,
    origin: str,
    trust: WitnessTrust,
    latest_size: int,
    latest_root: bytes,
) -> str:
    """Steps 1-3 of the module docstring; returns the line to print.

    Raises:
        QuorumMissing: no checkpoint, or too few valid cosignatures.
        LogAltered: the log no longer holds the cosigned tree.
        RemoteLogError: a malformed answer.
    """
    # 1. The cosigned checkpoint.
    raw = await api.raw("/v1/audit/checkpoint")
    if raw is None:
        raise QuorumMissing(f"audit log not witnessed: {api.base_url} serves no checkpoint")
    # 2. The log's signature and the quorum.
    try:
        cp, good = trust.verify(parse_note(raw), CosignerKey(origin, key, NOTE_ALG))
    except QuorumMissing as exc:
        raise QuorumMissing(f"audit log not witnessed: {exc}") from exc
    except (EnvelopeError, SignatureError) as exc:
        raise QuorumMissing(f"audit log not witnessed: the checkpoint: {exc}") from exc
    # 3. The log still holds that tree.
    head: Any = await api.raw(f"/v1/audit/tree-heads/{cp.size}")
    if head is not None:
        try:
            head = verify_tree_head(parse_signed_tree_head(head), key, origin)
        except (EnvelopeError, SignatureError) as exc:
            raise RemoteLogError(f"the tree head at size {cp.size}: {exc}") from exc
    if head is None and cp.size > latest_size:
        raise LogAltered(
            f"audit log altered: the witnesses cosigned size {cp.size}, root {b64e(cp.root)}, "
            f"but the log has no head there, its latest is at {latest_size}: it was truncated"
        )
    if head is None or head.root() != cp.root:
        raise LogAltered(
            f"audit log altered: the witnesses cosigned root {b64e(cp.root)} at size "
            f"{cp.size}; the log's history there is another: it was rewritten"
        )
    grew = ""
    if cp.size > latest_size:
        # 4. The live log grew while it was checked: the verified tree must be a prefix of
        # the cosigned one.
        try:
            verify_consistency(
                latest_size,
                cp.size,
                latest_root,
                cp.root,
                await api.consistency(latest_size, cp.size),
            )
        except ProofError as exc:
            raise LogAltered(
                f"audit log altered: the verified head at {latest_size} is not a prefix of "
                f"the cosigned tree at {cp.size}: {exc}"
            ) from exc
        grew = f" (the log grew from {latest_size} while it was checked; consistent)"
    after = latest_size - cp.size
    return (
        f"witnessed: size {cp.size} cosigned by {len(good)} of {len(trust.witnesses)} "
        f"witnesses (quorum {trust.quorum}: {', '.join(good)})"
        + (f"; {after} later entries not witnessed yet" if after > 0 else "")
        + grew
    )
