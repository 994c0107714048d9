"""The ``key-log`` request (ADR 28): keys' registration entries with inclusion proofs.

An SDK about to seal for recipients names their keys (agency, key id); the answer carries
each key's ``key.registered`` entries as the log hashed them, each with its RFC 9162
inclusion proof in the tree of the latest checkpoint the witnesses cosigned when that
checkpoint covers it, else in the latest signed tree head's, and both of those. The SDK
checks everything itself (``schemas.keylog``): nothing here is trusted.

With ``mine``, the caller's own newest key entries, for its monitor (``istmo keys
monitor``), which alarms on a key registered to it that its keystore does not hold.

Read-only, like ``directory``: not audited. The entries are as public as the directory
records they vouch for.
"""

from __future__ import annotations

import json

from broker.audit.entries import LogEntry
from broker.audit.log import shared_log
from broker.audit.witnessing import read_checkpoint
from broker.config import Settings
from schemas.canonical import b64e
from schemas.errors import EnvelopeError
from schemas.keylog import MAX_KEY_ENTRIES, KeyLogProof, KeyLogReply, KeyLogRequest
from schemas.treehead import parse_signed_tree_head

__all__ = ["KEYS_PER_REF", "key_log_reply"]

KEYS_PER_REF = 4  # entries answered per key asked: its registration, a backfill, spares


def _kid(entry: LogEntry) -> str | None:
    try:
        data = json.loads(entry.leaf).get("data")
    except (ValueError, AttributeError):
        return None
    kid = data.get("kid") if isinstance(data, dict) else None
    return kid if isinstance(kid, str) else None


def key_log_reply(settings: Settings, caller: str, req: KeyLogRequest) -> KeyLogReply:
    """The answer to ``req`` from ``caller``.

    Raises:
        EnvelopeError: the request names neither keys nor ``mine``, or both.
        AuditStoreError: the database refused.
    """
    if bool(req.keys) == bool(req.mine):
        raise EnvelopeError("name keys, or ask for your own (mine), not both", code="bad_request")
    log = shared_log(settings.db_url)
    # The checkpoint first: the head read after it is at least as large.
    try:
        note = read_checkpoint(settings.broker_dir)
    except EnvelopeError:
        note = None  # unreadable: answered without, the SDK says what it misses
    raw_head = log.head_document()
    if raw_head is None:
        return KeyLogReply(v=1, checkpoint=None, tree_head=None, entries=())
    sth = parse_signed_tree_head(raw_head)
    size = sth.head.tree_size
    witnessed = 0
    if note is not None:
        cp = note.checkpoint()
        signed = log.head(cp.size) if 0 < cp.size <= size else None
        if signed is not None and signed.head.root() == cp.root:
            witnessed = cp.size
        else:  # not a tree of this log (another log's file, or a rewritten log): not served
            note = None
    found: dict[int, LogEntry] = {}
    if req.mine:
        for e in log.key_entries([caller], MAX_KEY_ENTRIES)[caller]:
            found[e.index] = e
    else:
        by_agency = log.key_entries({ref.agency for ref in req.keys}, MAX_KEY_ENTRIES)
        for ref in req.keys:
            same = [e for e in by_agency[ref.agency] if _kid(e) == ref.kid]
            for e in same[-KEYS_PER_REF:]:
                found[e.index] = e
    targets = {
        index: witnessed if index < witnessed else size for index in found if index < size
    }  # an entry integrated after the head was read: the next answer has it
    proofs = log.inclusion_proofs(targets.items())
    items = [
        KeyLogProof(
            index=index,
            tree_size=target,
            leaf=b64e(found[index].leaf),
            proof=tuple(b64e(p) for p in proofs[(index, target)]),
        )
        for index, target in sorted(targets.items())
    ]
    return KeyLogReply(
        v=1,
        checkpoint=None if note is None else note.encode().decode(),
        tree_head=sth,
        entries=tuple(items),
    )
