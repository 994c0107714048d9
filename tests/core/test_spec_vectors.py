"""The wire specification's test vectors (docs/spec/vectors/) are what the code makes.

If ``test_committed_vectors_match_the_code`` fails after a change to the wire, the change
also changes docs/spec: regenerate with ``python -m schemas.spec_vectors --write`` and say
so in the spec and its changelog.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clients.opening import check_forward_consent
from schemas.canonical import b64e
from schemas.directory import SigningKeyRecord
from schemas.errors import IstmoError
from schemas.ids import AgencyId
from schemas.sealing import open_envelope, parse_envelope
from schemas.spec_keys import NOW, encryption_key, signing_key
from schemas.spec_vectors import VECTORS_DIR, diff_files, main, render_all
from schemas.subjects import API_OPS, ATTACH_OPS


def test_committed_vectors_match_the_code() -> None:
    assert diff_files() == [], "run python -m schemas.spec_vectors --write"


def test_writing_again_changes_nothing(tmp_path: Path) -> None:
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS_DIR, copy)
    assert main(["--write", "--dir", str(copy)]) == 0
    for path in VECTORS_DIR.glob("*.json"):
        assert (copy / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("keys.json", lambda d: d["agencies"][0]["signing"].update(kid="sig-" + "0" * 32)),
        ("envelopes.json", lambda d: d["cases"][0]["wraps"][0].update(key_hex="00" * 32)),
        ("signed-documents.json", lambda d: d["receipt"].update(nats_msg_id="x")),
        ("groups.json", lambda d: d["member_wraps"][0].update(epoch_key_hex="00" * 32)),
        ("attachments.json", lambda d: d["files"][0]["chunks"][1].update(last=False)),
        ("envelopes.json", lambda d: d["cases"][4]["group_wraps"][0].update(aad_hex="00")),
        ("forwarding.json", lambda d: d["grant"].update(signing_input="istmo/v1/grant")),
        ("forwarding.json", lambda d: d["failures"][1].update(fails="signature")),
    ],
)
def test_an_edited_file_is_found(
    tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS_DIR, copy)
    doc = json.loads((copy / name).read_text(encoding="utf-8"))
    edit(doc)
    (copy / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    assert diff_files(copy) == [name]
    assert main(["--check", "--dir", str(copy)]) == 1


def test_an_envelope_that_no_longer_opens_is_sealed_afresh(tmp_path: Path) -> None:
    """A kept envelope is used only while it opens to its case; a broken one is replaced
    (so --check reports it), never carried into the files."""
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS_DIR, copy)
    doc = json.loads((copy / "envelopes.json").read_text(encoding="utf-8"))
    env = json.loads(doc["cases"][1]["envelope"])
    env["body"]["nonce"] = "AAAAAAAAAAAAAAAA"
    doc["cases"][1]["envelope"] = json.dumps(env, separators=(",", ":"), sort_keys=True)
    (copy / "envelopes.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    fresh = json.loads(render_all(copy)["envelopes.json"])
    assert fresh["cases"][1]["envelope"] != doc["cases"][1]["envelope"]
    assert fresh["cases"][0]["envelope"] == doc["cases"][0]["envelope"]


def test_both_suites_and_their_hpke_identifiers_are_covered() -> None:
    doc = json.loads((VECTORS_DIR / "envelopes.json").read_text(encoding="utf-8"))
    suites = {(w["kem"], tuple(w["hpke_ids"])) for c in doc["cases"] for w in c["wraps"]}
    assert suites == {
        ("MLKEM768-X25519", ("0x647a", "0x0001", "0x0002")),
        ("X25519", ("0x0020", "0x0001", "0x0002")),
    }


def test_a_member_wrap_that_no_longer_opens_is_made_afresh(tmp_path: Path) -> None:
    """Like an envelope, a kept member wrap is used only while it opens to the epoch key."""
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS_DIR, copy)
    doc = json.loads((copy / "groups.json").read_text(encoding="utf-8"))
    wrap = json.loads(doc["member_wraps"][1]["wrap"])
    wrap["enc"] = wrap["enc"][:-4] + ("AAAA" if wrap["enc"][-4:] != "AAAA" else "BBBB")
    doc["member_wraps"][1]["wrap"] = json.dumps(wrap, separators=(",", ":"), sort_keys=True)
    (copy / "groups.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    fresh = json.loads(render_all(copy)["groups.json"])
    assert fresh["member_wraps"][1]["wrap"] != doc["member_wraps"][1]["wrap"]
    assert fresh["member_wraps"][0]["wrap"] == doc["member_wraps"][0]["wrap"]
    assert fresh["member_wraps"][1]["epoch_key_hex"] == doc["epoch_key_hex"]


def test_the_new_wire_features_have_vectors() -> None:
    """Replies and RFIs, a group-sealed envelope, attachments of two or more chunks, a
    forward with a grant, and an exchange of every agency API and chunk operation."""
    envs = json.loads((VECTORS_DIR / "envelopes.json").read_text(encoding="utf-8"))
    headers = {c["name"]: json.loads(c["header_canonical"]) for c in envs["cases"]}
    assert headers["rfi"]["reply_all"] is True
    assert headers["rfi"]["rfi_due"] > headers["rfi"]["created_at"]
    assert headers["reply"]["in_reply_to"] == headers["reply"]["thread"]
    assert headers["reply"]["thread"] == headers["rfi"]["bulletin_id"]
    group = next(c for c in envs["cases"] if c["name"] == "group-sealed")
    assert group["covered"] == ["rc-drugs", "sv-police"]
    assert [w["recipient"] for w in group["wraps"]] == ["cr-police"]
    assert [g["group"] for g in group["group_wraps"]] == ["SICA-drugs"]
    assert {f["fails"] for f in envs["failures"]} >= {"no_group_key", "wrap_invalid"}
    att = json.loads((VECTORS_DIR / "attachments.json").read_text(encoding="utf-8"))
    assert [len(f["chunks"]) for f in att["files"]] == [2, 1]
    assert [c["last"] for c in att["files"][0]["chunks"]] == [False, True]
    assert {f["fails"] for f in att["failures"]} == {"chunk_invalid"}
    assert {x["op"] for x in att["exchanges"]} == set(ATTACH_OPS)
    forward = headers["forward"]["forward_of"]
    assert forward["bulletin_id"] == headers["two-suites"]["bulletin_id"]
    assert forward["grant"]["recipient"] == headers["forward"]["recipients"][0]
    assert {f["fails"] for f in envs["failures"]} >= {"forward_consent_invalid"}
    api = json.loads((VECTORS_DIR / "agency-api.json").read_text(encoding="utf-8"))
    asked = {x["op"] for x in api["exchanges"]}
    # A push is answered with the envelope as stored (envelopes.json), not JSON (ADR 38).
    skipped = {"resolve", "explain", "rotate", "revoke-key", "dead-letters", "push"}
    assert asked >= set(API_OPS) - skipped


def test_the_forward_vectors_are_what_the_sdk_accepts_and_refuses() -> None:
    """The forward case's grant checks out in the SDK (``clients.opening``), and the SDK
    refuses every forward failure with the code the vectors give, so the spec's rule and
    the code that receives forwards cannot drift apart."""

    def grant_key(agency: str, kid: str) -> SigningKeyRecord | None:
        """The vectors' directory: each agency's one signing key, never revoked."""
        key = signing_key(agency).verify_key
        if key.kid != kid:
            return None
        return SigningKeyRecord(kid=key.kid, public=b64e(key.public), created_at=NOW - 86400)

    envs = json.loads((VECTORS_DIR / "envelopes.json").read_text(encoding="utf-8"))
    fwd = json.loads((VECTORS_DIR / "forwarding.json").read_text(encoding="utf-8"))
    case = next(c for c in envs["cases"] if c["name"] == fwd["forward_case"])
    env = parse_envelope(case["envelope"].encode())
    assert env.header.forward_of is not None
    assert env.header.forward_of.grant is not None
    grant = env.header.forward_of.grant
    came = check_forward_consent(
        env, agency=fwd["recipient"], grant_key=grant_key(grant.originator, grant.kid)
    )
    assert came is not None
    assert (came.consent, came.originator, came.forwarded_by) == (
        fwd["consent"],
        fwd["original"]["originator"],
        fwd["forwarder"],
    )
    refused = [f for f in envs["failures"] if f["fails"] == "forward_consent_invalid"]
    assert [f["why"] for f in refused] == [f["why"] for f in fwd["failures"]]
    for failure in refused:
        bad = parse_envelope(failure["envelope"].encode())
        assert bad.header.forward_of is not None
        assert bad.header.forward_of.grant is not None
        g = bad.header.forward_of.grant
        with pytest.raises(IstmoError) as err:
            check_forward_consent(
                bad, agency=failure["open_as"], grant_key=grant_key(g.originator, g.kid)
            )
        assert err.value.code == failure["fails"], failure["why"]


def test_a_forward_failure_that_no_longer_fails_is_sealed_afresh(tmp_path: Path) -> None:
    """A kept forward failure is used only while it opens and its grant is refused; one
    edited into another forward is replaced, the others are kept."""
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS_DIR, copy)
    doc = json.loads((copy / "envelopes.json").read_text(encoding="utf-8"))
    at = [k for k, f in enumerate(doc["failures"]) if f["fails"] == "forward_consent_invalid"]
    forward = next(c for c in doc["cases"] if c["name"] == "forward")
    doc["failures"][at[0]]["envelope"] = forward["envelope"]  # a forward that checks out
    (copy / "envelopes.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    fresh = json.loads(render_all(copy)["envelopes.json"])
    assert fresh["failures"][at[0]]["envelope"] != forward["envelope"]
    assert fresh["failures"][at[1]]["envelope"] == doc["failures"][at[1]]["envelope"]
    assert fresh["cases"] == doc["cases"]


def test_the_signed_receipts_exchange_carries_a_receipt_that_verifies() -> None:
    """The originator's check, on the vectors alone: the receipt in the signed answer is
    the one signed-documents.json signs, and verifies under its signer's key."""
    from schemas.canonical import b64d
    from schemas.keys import VerifyKey
    from schemas.receipt import Receipt, verify_receipt

    api = json.loads((VECTORS_DIR / "agency-api.json").read_text(encoding="utf-8"))
    (x,) = [x for x in api["exchanges"] if '"signed":true' in x["request"]]
    reply = json.loads(x["reply"])
    docs = json.loads((VECTORS_DIR / "signed-documents.json").read_text(encoding="utf-8"))
    signed = json.loads(docs["receipt"]["message"])
    (got,) = [e["receipt"] for e in reply["recipients"] if e["receipt"] is not None]
    assert got == signed
    assert reply["envelope_digest"] == got["envelope_digest"]
    keys = json.loads((VECTORS_DIR / "keys.json").read_text(encoding="utf-8"))
    (signer,) = [a for a in keys["agencies"] if a["agency"] == got["recipient"]]
    public = b64d(signer["signing"]["public"], field="public", max_bytes=32)
    verify_receipt(Receipt.model_validate(got), VerifyKey(public))


def test_the_acknowledgement_vector_is_a_reply_to_its_originator_alone() -> None:
    """ADR 27: an acknowledgement is a reply, sealed for the answered bulletin's originator
    only, whose sealed content carries ``acknowledges: true`` (the relay never sees it)."""
    envs = json.loads((VECTORS_DIR / "envelopes.json").read_text(encoding="utf-8"))
    case = next(c for c in envs["cases"] if c["name"] == "acknowledgement")
    original = next(c for c in envs["cases"] if c["name"] == "two-suites")
    env = parse_envelope(case["envelope"].encode())
    assert (
        env.header.in_reply_to
        == env.header.thread
        == json.loads(original["header_canonical"])["bulletin_id"]
    )
    assert env.header.recipients == (original["originator"],)
    assert "acknowledges" not in case["header_canonical"]
    inner = open_envelope(
        env,
        recipient=AgencyId("gt-police"),
        key=encryption_key("gt-police"),
        sender_key=signing_key("rc-drugs").verify_key,
    )
    assert inner.content.acknowledges is True
