"""The JavaScript implementation of docs/spec (interop/js) against the Python stack, both
ways: it opens and acknowledges what the Python SDK sealed (its signed receipt counts at
the relay), a forward the Python SDK sent with its originator's grant included, and the
Python SDK opens what it sealed. It also checks the spec's vectors.

Skipped only where ``node`` is not installed; ``npm ci`` is run for interop/js if its
``node_modules`` is missing (``scripts/test`` runs it too).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from broker.runtime.stack import Stack
from clients.results import ReceivedBulletin
from schemas.labels import Classification, Handling, Labels, Tlp
from tests.integration.recall_kit import LABELS as TO_BZ
from tests.integration.recall_kit import take
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.waiting import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)

JS_DIR = Path(__file__).resolve().parents[2] / "interop" / "js"
NODE = shutil.which("node")
TO_SICA = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)


@pytest.fixture(scope="module")
def js() -> Path:
    """interop/js with its dependencies installed."""
    if NODE is None:
        pytest.skip("node is not installed: the JavaScript implementation cannot run")
    if not (JS_DIR / "node_modules").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: install npm to run interop/js"
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci in {JS_DIR} failed: {done.stderr[-2000:]}"
    return JS_DIR


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("interop") / "istmo") as s:
        yield s


async def node(js: Path, script: str, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run a script of interop/js without blocking the stack's event loop."""
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        f"bin/{script}",
        *args,
        cwd=js,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"node {script} did not finish within {timeout} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_js_checks_the_spec_vectors(js: Path) -> None:
    code, out, err = await node(js, "vectors.js", timeout=120)
    assert code == 0, out + err
    assert "0 failed" in out
    assert "FAIL" not in out


async def test_js_opens_a_python_bulletin_and_its_receipt_counts(js: Path, stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        sent = await gt.publish(
            title="Lanchas rápidas", text="Dos lanchas salieron a las 03:10. 🚤", labels=TO_SICA
        )
        assert sent.state == "accepted"
        assert "rc-drugs" in sent.routed
        keystore = stack.settings.keys_dir / "rc-drugs.json"
        code, out, err = await node(
            js, "receive.js", "--keystore", str(keystore), "--nats", nats_url(stack),
            "--count", "1", "--timeout", "30",
        )  # fmt: skip
        assert code == 0, err
        got = json.loads(out.splitlines()[0])
        assert got["id"] == sent.bulletin_id
        assert (got["originator"], got["title"]) == ("gt-police", "Lanchas rápidas")
        assert got["body"] == "Dos lanchas salieron a las 03:10. 🚤"
        assert got["labels"]["rel_to"] == ["SICA"]

        async def received_by_rc_drugs() -> bool:
            report = await gt.receipts(sent.bulletin_id)
            return any(a == "rc-drugs" and at is not None for a, at in report.recipients)

        # The relay accepted the receipt JavaScript signed: it checks it against the
        # envelope digest it recorded and rc-drugs's registered key.
        await eventually(received_by_rc_drugs, what="the relay to count rc-drugs's receipt")


async def test_python_opens_a_js_bulletin(js: Path, stack: Stack) -> None:
    keystore = stack.settings.keys_dir / "sv-police.json"
    labels = {**TO_SICA.model_dump(mode="json", exclude_defaults=True), "precedence": "FLASH"}
    code, out, err = await node(
        js, "publish.js", "--keystore", str(keystore), "--nats", nats_url(stack),
        "--labels", json.dumps(labels),
        "--title", "Desde JavaScript", "--text", "Sellado en Node ✓",
    )  # fmt: skip
    assert code == 0, err + out
    published = json.loads(out)
    assert published["verdict"]["state"] == "accepted"
    assert "rc-drugs" in published["verdict"]["routed"]
    got: list[ReceivedBulletin] = []

    async def keep(b: ReceivedBulletin) -> None:
        got.append(b)

    async with await client(stack, "rc-drugs") as rc:
        while not any(b.id == published["bulletin_id"] for b in got):
            handed = await rc.receive(keep, count=1, timeout=30)
            assert handed == 1, "the JavaScript bulletin did not reach rc-drugs"
    bulletin = next(b for b in got if b.id == published["bulletin_id"])
    assert bulletin.originator == "sv-police"
    assert (bulletin.title, bulletin.body) == ("Desde JavaScript", "Sellado en Node ✓")
    assert bulletin.labels.precedence == "FLASH"


async def test_js_saves_a_python_attachment_fetched_over_att_get(
    js: Path, stack: Stack, tmp_path: Path
) -> None:
    """The JavaScript client fetches the chunks of a file the Python SDK sealed, opens
    them, checks them against the signed digest, and saves the file byte for byte."""
    original = tmp_path / "muelle.bin"
    # Two chunks at the SDK's 512 KiB: a full one and a short last one.
    original.write_bytes(bytes(range(256)) * 2100 + "fin ✓".encode())
    async with await client(stack, "gt-police") as gt:
        sent = await gt.publish(
            title="Fotos del muelle", text="Adjuntas.", labels=TO_SICA, attachments=[original]
        )
        assert sent.state == "accepted"
        assert "rc-drugs" in sent.routed
    keystore = stack.settings.keys_dir / "rc-drugs.json"
    inbox = tmp_path / "inbox"
    code, out, err = await node(
        js, "receive.js", "--keystore", str(keystore), "--nats", nats_url(stack),
        "--count", "1", "--timeout", "30", "--save-attachments", str(inbox),
    )  # fmt: skip
    assert code == 0, err
    got = json.loads(out.splitlines()[0])
    assert got["id"] == sent.bulletin_id
    saved = inbox / sent.bulletin_id / "muelle.bin"
    assert got["attachments"] == [str(saved)]
    assert saved.read_bytes() == original.read_bytes()
    assert not list((inbox / sent.bulletin_id).glob("*.part"))


async def test_js_receives_a_python_forward_and_checks_its_grant(js: Path, stack: Stack) -> None:
    """bz-police (the Python SDK) forwards gt-police's H2 bulletin to jm-police once
    gt-police granted it; the JavaScript client, as jm-police, opens the forward, checks
    the grant against gt-police's key from the signed directory and says where it came
    from; its receipt counts at the relay."""
    labels = TO_BZ.model_copy(update={"handling": (Handling.H2,)})
    async with await client(stack, "gt-police") as gt:
        sent = await gt.publish(title="Lanchas en Dangriga", text="Tres, al alba.", labels=labels)
        assert sent.state == "accepted"
    # bz-police (in SICA) has the module's earlier bulletins waiting before this one.
    handed: list[str] = []
    for _ in range(10):
        handed += [b.id for b in (await take(stack, "bz-police")).bulletins]
        if sent.bulletin_id in handed:
            break
    assert sent.bulletin_id in handed, "the bulletin did not reach bz-police"
    async with await client(stack, "bz-police") as bz:
        asked = await bz.forward(sent.bulletin_id, to="jm-police", reason="Jamaica tracks them")
        assert asked.state == "requested"
    async with await client(stack, "gt-police") as gt:
        assert await gt.grant_forward(asked.request_id or "", valid_for_s=3600) == "granted"
    async with await client(stack, "bz-police") as bz:
        done = await bz.forward(sent.bulletin_id, to="jm-police")
    assert (done.state, done.consent) == ("forwarded", "originator")
    keystore = stack.settings.keys_dir / "jm-police.json"
    code, out, err = await node(
        js, "receive.js", "--keystore", str(keystore), "--nats", nats_url(stack),
        "--count", "1", "--timeout", "30",
    )  # fmt: skip
    assert code == 0, err
    b = json.loads(out.splitlines()[0])
    assert (b["id"], b["originator"], b["title"]) == (
        done.forward_id,
        "bz-police",
        "Lanchas en Dangriga",
    )
    assert b["forwarded"] == {
        "bulletin_id": sent.bulletin_id,
        "originator": "gt-police",
        "forwarded_by": "bz-police",
        "consent": "originator",
    }
    assert b["labels"]["named"] == ["jm-police"]

    async def counted() -> bool:
        async with await client(stack, "bz-police") as bz:
            report = await bz.receipts(done.forward_id or "")
        return any(a == "jm-police" and at is not None for a, at in report.recipients)

    await eventually(counted, what="the relay to count jm-police's receipt of the forward")
