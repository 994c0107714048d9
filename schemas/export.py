"""Export the JSON Schema of the wire models to ``schemas/json/``.

    python -m schemas.export           write every schema file
    python -m schemas.export --check   exit 1, naming the files that differ from the models

The files are generated, never edited by hand: the pydantic models in this package are the
source of truth, and ``tests/core/test_json_schemas.py`` fails when the files drift from them.
What the schemas cannot say (canonical base64, signatures, wraps matching the signed
recipients, key commitments) is checked by ``sealing``, not here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.agency import (
    Announcement,
    BulletinRequest,
    ChangesRequest,
    DeadLettersReply,
    DeadLettersRequest,
    DirectoryRequest,
    ErrorReply,
    ExplainReply,
    PushRequest,
    RecallReply,
    ReceiptsReply,
    RecipientsReply,
    ReplyContextReply,
    ResolveReply,
    ResolveRequest,
    RevokeKeyReply,
    RevokeKeyRequest,
    RfiListReply,
    RfiListRequest,
    RotateReply,
    StatusReply,
    WithheldReply,
    WithheldRequest,
)
from schemas.audit import AuditEvent
from schemas.desk_summary import DeskSummary, DeskSummaryReply
from schemas.directory import SignedChanges, SignedExcerpt
from schemas.envelope import Envelope, InnerBulletin
from schemas.federation import LinkCounts
from schemas.forwarding import (
    ForwardAnswer,
    ForwardAsk,
    ForwardDecision,
    ForwardRequestsReply,
    ForwardRequestsRequest,
)
from schemas.group_requests import (
    EpochPost,
    EpochPostReply,
    GroupKeysReply,
    GroupKeysRequest,
    GroupsReply,
    GroupsRequest,
    RosterReply,
    RosterRequest,
)
from schemas.keylog import KeyLogReply, KeyLogRequest
from schemas.labels import Labels
from schemas.receipt import Receipt
from schemas.receipt_requests import ReceiptsRequest, SignedReceiptsReply
from schemas.rotation import RotationRequest
from schemas.treehead import SignedTreeHead, TreeHead
from schemas.withdrawal import Withdrawal

__all__ = ["JSON_DIR", "MODELS", "SCHEMA_BASE_URI", "diff_files", "main", "render_all"]

SCHEMA_BASE_URI = "https://istmo.example/schemas/v1/"
JSON_DIR = Path(__file__).resolve().parent / "json"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# File stem -> model. Stems are part of the published $id: renaming one is a breaking change.
MODELS: dict[str, type[BaseModel]] = {
    # The agency API over NATS (schemas.agency): a request and a reply per operation.
    "agency-announcement": Announcement,
    "agency-bulletin-request": BulletinRequest,
    "agency-changes-request": ChangesRequest,
    "agency-dead-letters-reply": DeadLettersReply,
    "agency-dead-letters-request": DeadLettersRequest,
    "agency-directory-request": DirectoryRequest,
    "agency-error-reply": ErrorReply,
    "agency-explain-reply": ExplainReply,
    "agency-key-log-request": KeyLogRequest,
    "agency-key-log-reply": KeyLogReply,
    "agency-forward-answer": ForwardAnswer,
    "agency-forward-decision": ForwardDecision,
    "agency-forward-request": ForwardAsk,
    "agency-forward-requests-reply": ForwardRequestsReply,
    "agency-forward-requests-request": ForwardRequestsRequest,
    "agency-receipts-reply": ReceiptsReply,
    "agency-receipts-request": ReceiptsRequest,
    "agency-signed-receipts-reply": SignedReceiptsReply,
    "agency-recall-reply": RecallReply,
    "agency-recipients-reply": RecipientsReply,
    "agency-reply-context-reply": ReplyContextReply,
    "agency-resolve-reply": ResolveReply,
    "agency-resolve-request": ResolveRequest,
    "agency-revoke-key-reply": RevokeKeyReply,
    "agency-revoke-key-request": RevokeKeyRequest,
    "agency-rfi-list-reply": RfiListReply,
    "agency-rfi-list-request": RfiListRequest,
    "agency-rotate-reply": RotateReply,
    "agency-status-reply": StatusReply,
    "agency-withheld-reply": WithheldReply,
    "agency-withheld-request": WithheldRequest,
    "agency-push-request": PushRequest,
    "agency-desk-summary": DeskSummary,
    "agency-desk-summary-reply": DeskSummaryReply,
    # Community group keys (schemas.group_requests, schemas.groups; ADR 18).
    "agency-groups-request": GroupsRequest,
    "agency-groups-reply": GroupsReply,
    "agency-group-roster-request": RosterRequest,
    "agency-group-roster-reply": RosterReply,
    "agency-group-epoch-post": EpochPost,
    "agency-group-epoch-reply": EpochPostReply,
    "agency-group-keys-request": GroupKeysRequest,
    "agency-group-keys-reply": GroupKeysReply,
    "rotation-request": RotationRequest,
    "withdrawal": Withdrawal,
    "audit-event": AuditEvent,
    "envelope": Envelope,
    "inner-bulletin": InnerBulletin,
    "federation-link-counts": LinkCounts,
    "labels": Labels,
    "receipt": Receipt,
    "signed-changes": SignedChanges,
    "signed-excerpt": SignedExcerpt,
    "tree-head": TreeHead,
    "signed-tree-head": SignedTreeHead,
}


def _file_name(stem: str) -> str:
    return f"{stem}.schema.json"


def _render(stem: str, model: type[BaseModel]) -> str:
    schema: dict[str, Any] = model.model_json_schema(mode="validation")
    schema["$schema"] = _DIALECT
    schema["$id"] = SCHEMA_BASE_URI + _file_name(stem)
    schema["title"] = model.__name__
    return json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """Render every exported schema.

    Returns:
        File name (``envelope.schema.json``) -> file text: sorted keys, 2-space indent,
        trailing newline.
    """
    return {_file_name(stem): _render(stem, model) for stem, model in sorted(MODELS.items())}


def diff_files(directory: Path = JSON_DIR) -> list[str]:
    """Names of the schema files in ``directory`` that are missing or differ from the models."""
    return _stale(render_all(), directory)


def _stale(rendered: dict[str, str], directory: Path) -> list[str]:
    stale = []
    for name, text in rendered.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def _write_all(directory: Path) -> list[str]:
    rendered = render_all()
    stale = _stale(rendered, directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (directory / name).write_text(rendered[name], encoding="utf-8", newline="\n")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schema files, or with ``--check`` report those that drifted.

    Returns:
        0 when the files are (now) current; 1 when ``--check`` found files that differ.
    """
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file differs"
    )
    parser.add_argument(
        "--dir", type=Path, default=JSON_DIR, help="output directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        stale = diff_files(directory)
        for name in stale:
            print(f"{directory / name}: differs from the models; run python -m schemas.export")
        return 1 if stale else 0
    for name in _write_all(directory):
        print(f"wrote {directory / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
