"""The ``key-log`` exchange of the agency API vectors (ADR 28): a log of two entries whose
second registers rc-drugs' encryption key, the tree head signed by the spec's log key
(``signing_key("log")``), and the inclusion proof of that entry."""

from __future__ import annotations

from schemas.agency import encode_reply, encode_request
from schemas.audit import AuditEvent
from schemas.canonical import b64e, canonical_json
from schemas.keylog import KeyLogProof, KeyLogReply, KeyLogRequest, KeyRef, key_sha256
from schemas.merkle_verify import TreeBuilder, leaf_hash
from schemas.spec_keys import NOW, encryption_key, signing_key
from schemas.treehead import TreeHead, sign_tree_head

__all__ = ["LOG_ORIGIN", "key_log_exchanges"]

LOG_ORIGIN = "istmo.example/audit"


def _leaf(event: AuditEvent) -> bytes:
    return canonical_json(event.model_dump(mode="json"))


def key_log_exchanges() -> list[tuple[str, str, bytes, bytes]]:
    """(caller, op, request, reply): gt-police asks for rc-drugs' encryption key entry."""
    sk = signing_key("gt-police").verify_key
    ek = encryption_key("rc-drugs").public_key
    at = NOW * 1000
    leaves = [
        _leaf(
            AuditEvent(
                event_id=f"key:{sk.kid}",
                type="key.registered",
                time=at,
                actor="gt-police",
                subject="gt-police",
                data={"kid": sk.kid, "use": "signing", "key_sha256": key_sha256(sk.public)},
            )
        ),
        _leaf(
            AuditEvent(
                event_id=f"key:{ek.kid}",
                type="key.registered",
                time=at,
                actor="rc-drugs",
                subject="rc-drugs",
                data={
                    "kid": ek.kid,
                    "use": "encryption",
                    "kem": ek.kem,
                    "key_sha256": key_sha256(ek.public),
                },
            )
        ),
    ]
    tree = TreeBuilder()
    tree.extend(leaf_hash(leaf) for leaf in leaves)
    head = TreeHead(v=1, origin=LOG_ORIGIN, tree_size=2, root_hash=b64e(tree.root()), timestamp=at)
    reply = KeyLogReply(
        v=1,
        checkpoint=None,
        tree_head=sign_tree_head(head, signing_key("log")),
        entries=(
            KeyLogProof(
                index=1,
                tree_size=2,
                leaf=b64e(leaves[1]),
                proof=(b64e(leaf_hash(leaves[0])),),
            ),
        ),
    )
    request = KeyLogRequest(keys=(KeyRef(agency="rc-drugs", kid=ek.kid),))
    return [("gt-police", "key-log", encode_request(request), encode_reply(reply))]
