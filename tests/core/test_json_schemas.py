"""The committed JSON Schema files in schemas/json/ match the pydantic models.

If a test here fails after a model change, regenerate with ``python -m schemas.export`` and
commit the files with the change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.export import JSON_DIR, MODELS, SCHEMA_BASE_URI, diff_files, main, render_all

RENDERED = render_all()


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_committed_file_matches_model(name: str) -> None:
    path = JSON_DIR / name
    assert path.is_file(), f"{name} missing: run python -m schemas.export"
    assert path.read_text(encoding="utf-8") == RENDERED[name], (
        f"{name} drifted from the models: run python -m schemas.export"
    )


def test_no_stale_schema_files() -> None:
    on_disk = {p.name for p in JSON_DIR.glob("*.schema.json")}
    assert on_disk == set(RENDERED)


def test_every_model_is_exported() -> None:
    assert set(RENDERED) == {f"{stem}.schema.json" for stem in MODELS}
    assert {m.__name__ for m in MODELS.values()} == {
        "Announcement",
        "BulletinRequest",
        "ChangesRequest",
        "DeadLettersReply",
        "DeadLettersRequest",
        "DirectoryRequest",
        "ErrorReply",
        "ExplainReply",
        "ForwardAnswer",
        "ForwardAsk",
        "KeyLogReply",
        "KeyLogRequest",
        "ForwardDecision",
        "ForwardRequestsReply",
        "ForwardRequestsRequest",
        "ReceiptsReply",
        "ReceiptsRequest",
        "SignedReceiptsReply",
        "RecallReply",
        "RecipientsReply",
        "ReplyContextReply",
        "ResolveReply",
        "ResolveRequest",
        "RevokeKeyReply",
        "RevokeKeyRequest",
        "RfiListReply",
        "RfiListRequest",
        "RotateReply",
        "RotationRequest",
        "StatusReply",
        "WithheldReply",
        "WithheldRequest",
        "PushRequest",
        "DeskSummary",
        "DeskSummaryReply",
        "GroupsRequest",
        "GroupsReply",
        "RosterRequest",
        "RosterReply",
        "EpochPost",
        "EpochPostReply",
        "GroupKeysRequest",
        "GroupKeysReply",
        "AuditEvent",
        "Envelope",
        "InnerBulletin",
        "Labels",
        "LinkCounts",
        "Receipt",
        "SignedChanges",
        "SignedExcerpt",
        "SignedTreeHead",
        "TreeHead",
        "Withdrawal",
    }


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_file_format(name: str) -> None:
    text = RENDERED[name]
    schema = json.loads(text)
    assert text.endswith("}\n")
    assert not text.endswith("\n\n")
    assert text == json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert schema["$id"] == f"{SCHEMA_BASE_URI}{name}"
    assert schema["$id"].startswith("https://istmo.example/schemas/v1/")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == MODELS[name.removesuffix(".schema.json")].__name__
    # An object that refuses unknown fields, or (a reply told apart by a field) one of such.
    variants = [schema["$defs"][v["$ref"].rsplit("/", 1)[1]] for v in schema.get("oneOf", [])]
    for shape in variants or [schema]:
        assert shape["type"] == "object"
        assert shape["additionalProperties"] is False


def test_envelope_schema_says_what_the_model_refuses() -> None:
    schema = json.loads(RENDERED["envelope.schema.json"])
    header = schema["$defs"]["Header"]
    assert header["additionalProperties"] is False
    assert header["properties"]["created_at"]["maximum"] == 2**40
    assert header["properties"]["created_at"]["minimum"] == 0
    assert header["properties"]["originator"]["pattern"] == "^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$"
    assert schema["properties"]["v"]["const"] == 1


def test_check_passes_on_current_files() -> None:
    assert diff_files() == []
    assert main(["--check"]) == 0


def test_check_names_missing_and_changed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "labels.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "receipt.schema.json").unlink()
    assert main(["--check", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "labels.schema.json" in out
    assert "receipt.schema.json" in out
    assert "envelope.schema.json" not in out
    assert diff_files(tmp_path) == ["labels.schema.json", "receipt.schema.json"]


def test_write_rewrites_only_what_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    (tmp_path / "labels.schema.json").write_text("{}\n", encoding="utf-8")
    assert main(["--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"wrote {tmp_path / 'labels.schema.json'}"]
    assert diff_files(tmp_path) == []
