"""Keys in the audit log (ADR 28) on a whole broker in process, with one local witness.

A publishing SDK checks each recipient's key is in the witnessed log before sealing for it.
A hostile operator writes another public key for hn-police straight into the database:
the relay signs it into the directory, and the SDK refuses to seal for it (no entry). Once
the operator makes it pass (the backfill at a broker's start logs it), the SDK accepts it,
and hn-police's own monitor alarms on a key registered to it that it does not hold: the
substitution is no longer unseen.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from broker.audit.sequencer import DEFAULT_ORIGIN, log_verify_key
from broker.audit.witnessing import CHECKPOINT_FILE, load_trust
from broker.config import Settings
from broker.directory.keylog import backfill_key_entries
from broker.runtime.stack import Stack
from broker.runtime.witnesses import LocalWitnesses, start_local_witnesses
from clients.cli import main
from clients.key_commands import ALARM_EXIT
from clients.key_log import monitor_own_keys
from clients.sdk import IstmoClient
from schemas.canonical import b64e
from schemas.keylog import KeyLogTrust, KeyNotLogged
from schemas.keys import EncryptionKey
from schemas.labels import Classification, Labels, Tlp
from tests.integration.stack_inproc import nats_url, running_stack
from tests.waiting import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
]  # slow: starts a stack; run first (tests/conftest.py)
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("keylog") / "istmo"
    witnesses: LocalWitnesses = start_local_witnesses(
        Settings(data_dir=data_dir), 1, None, out=lambda _l: None
    )
    try:
        async with running_stack(data_dir) as s:
            yield s
    finally:
        witnesses.stop()


def trust_of(stack: Stack) -> KeyLogTrust:
    broker_dir = stack.settings.broker_dir
    key = log_verify_key(broker_dir)
    assert key is not None
    return KeyLogTrust(key, DEFAULT_ORIGIN, load_trust(stack.settings.witnesses_path))


async def connect(stack: Stack, agency: str, trust: KeyLogTrust) -> IstmoClient:
    keystore = stack.settings.keys_dir / f"{agency}.json"
    return await IstmoClient.connect(keystore, nats_url(stack), key_log=trust)


def substitute_key(stack: Stack, agency: str) -> str:
    """What a hostile operator does: another public key in the agency's row, straight into
    the database (no registry, no audit event), and the relays rebuild."""
    mallory = EncryptionKey.generate("X25519").public_key
    db = Path(stack.settings.data_dir / "istmo.db")
    assert db.exists()
    assert stack.registry is not None
    assert stack.directory is not None
    with stack.registry.session() as s:
        s.connection().execute(
            text(
                "UPDATE encryption_key SET kid = :kid, kem = 'X25519', public = :public "
                "WHERE agency = :agency AND current"
            ),
            {"kid": mallory.kid, "public": b64e(mallory.public), "agency": agency},
        )
        s.commit()
    stack.directory.refresh()
    return mallory.kid


async def test_a_substituted_key_is_refused_then_seen_by_its_agency(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    broker_dir = stack.settings.broker_dir
    await eventually(lambda: (broker_dir / CHECKPOINT_FILE).exists(), what="a witnessed checkpoint")
    trust = trust_of(stack)
    assert trust.mode == "witnessed"
    async with await connect(stack, "gt-police", trust) as gt:
        # 1. Genuine keys: in the log, under the checkpoint; checked once, then kept.
        started = time.perf_counter()
        first = await gt.publish(title="keys", text="logged keys", labels=LABELS)
        first_s = time.perf_counter() - started
        assert first.state == "accepted"
        assert "hn-police" in first.routed
        asked = gt.key_log.asked
        started = time.perf_counter()
        again = await gt.publish(title="keys", text="again", labels=LABELS)
        again_s = time.perf_counter() - started
        assert again.state == "accepted"
        assert gt.key_log.asked == asked
        print(f"publish: first {first_s * 1000:.0f} ms, kept {again_s * 1000:.0f} ms")

    async with await connect(stack, "hn-police", trust) as hn:
        clean = monitor_own_keys(hn.keystore, await hn.key_log_entries(), trust)
        assert clean.alarms == []
        assert clean.proven >= 2

    # 2. The operator substitutes hn-police's key: the directory serves it, signed.
    mallory = substitute_key(stack, "hn-police")
    async with await connect(stack, "gt-police", trust) as gt2:
        with pytest.raises(KeyNotLogged) as refused:
            await gt2.publish(title="keys", text="to a substituted key", labels=LABELS)
        assert refused.value.code == "key_not_logged"
        assert f"hn-police's key {mallory}" in str(refused.value)

    # 3. To make it pass, the key must be logged (here by the backfill a restart runs).
    assert backfill_key_entries(stack.registry) >= 1  # type: ignore[arg-type]
    assert backfill_key_entries(stack.registry) == 0  # type: ignore[arg-type]  # once
    async with await connect(stack, "gt-police", trust) as gt3:
        passed = await gt3.publish(title="keys", text="logged now", labels=LABELS)
        assert "hn-police" in passed.routed  # inclusion alone: the key is in the log ...

    async with await connect(stack, "hn-police", trust) as hn:
        # (hn-police cannot open what is sealed for mallory's key; its monitor says why.)
        report = monitor_own_keys(hn.keystore, await hn.key_log_entries(), trust)
    assert len(report.alarms) == 1, report.alarms  # ... where its agency sees it
    assert mallory in report.alarms[0]
    assert "by system (backfill)" in report.alarms[0]

    # The command an agency runs from cron: the same judgement, exit 3 on the alarm.
    witnesses = json.loads(stack.settings.witnesses_path.read_text())
    trust_file = stack.settings.data_dir.parent / "key-log.json"
    trust_file.write_text(
        json.dumps(
            {
                "log_key": b64e(trust.log_key.public),
                "origin": DEFAULT_ORIGIN,
                **{k: witnesses[k] for k in ("quorum", "witnesses")},
            }
        )
    )
    capsys.readouterr()

    def monitor(agency: str) -> int:
        argv = ["keys", "monitor", "--as", agency, "--data-dir", str(stack.settings.data_dir)]
        return main([*argv, "--key-log", str(trust_file)])

    assert await asyncio.to_thread(monitor, "gt-police") == 0
    assert "every key registered to you is one this keystore holds" in capsys.readouterr().out
    assert await asyncio.to_thread(monitor, "hn-police") == ALARM_EXIT
    out = capsys.readouterr()
    assert "(witnessed, size" in out.out
    assert "istmo: ALARM: entry" in out.err
    assert mallory in out.err
