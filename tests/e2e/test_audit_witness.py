"""The witnessed audit log: `istmo witness` processes over real HTTP on loopback, the
sequencer gathering their cosignatures, and `istmo audit verify` and `monitor` requiring
the quorum.

The forged history of issue 20 (someone with the database and the log key truncates the
log and signs new heads) verified before; now the witnesses refuse to cosign it (409 at
the same size, 422 past it) and `verify` refuses the log: the cosigned checkpoint names a
size or root the log no longer has.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from broker.audit.sequencer import SequencerLimits, open_sequencer
from broker.audit.witnessing import CHECKPOINT_FILE, read_checkpoint
from broker.config import Settings
from broker.files import signing_key_file
from broker.store.registry import Registry
from schemas.canonical import b64e
from schemas.checkpoint import AddCheckpoint, Checkpoint, format_add_checkpoint, sign_checkpoint
from schemas.keys import SigningKey
from tests import tamper
from tests.e2e.test_audit_cli import events, one_line_error
from tests.stackproc import ISTMO, UpProcess, free_port, interrupt, run_cli
from tests.waiting import eventually_sync
from tests.warm import run_istmo

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

BATCH = 500
ORIGIN = "istmo.local/audit"


@dataclass
class WitnessProc:
    name: str
    state: Path
    log_pub: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    vkey: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def out_file(self) -> Path:
        return self.state.parent / f"{self.name}.out"

    def start(self) -> WitnessProc:
        argv = [ISTMO, "witness", "--as", self.name, "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--log-key", str(self.log_pub), "--state", str(self.state)]
        with (
            self.out_file.open("w") as out,
            (self.state.parent / f"{self.name}.err").open("a") as err,
        ):
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        text = eventually_sync(
            self.out_file.read_text, until=lambda t: "; Ctrl-C stops" in t, what=self.name
        )
        self.vkey = text.split("key: ")[1].split()[0]
        return self

    @property
    def stderr(self) -> str:
        return (self.state.parent / f"{self.name}.err").read_text()

    def stop(self) -> None:
        assert self.proc is not None
        interrupt(self.proc)
        assert self.proc.returncode == 0, self.stderr
        self.proc = None


def sequence(data_dir: Path) -> tuple[str, list[str]]:
    """Integrate the outbox as the sequencer does; (its publisher's last problem, output)."""
    out: list[str] = []
    seq = open_sequencer(
        Settings(data_dir=data_dir), limits=SequencerLimits(batch_entries=BATCH), out=out.append
    )
    try:
        seq.drain()
        assert seq.publisher is not None
        return seq.publisher.last_problem, out
    finally:
        seq.close()


@pytest.fixture
def witnessed(tmp_path: Path):
    """A data directory whose log (3000 entries, heads every 500) three witnesses cosigned,
    quorum 2."""
    data_dir = tmp_path / "istmo"
    data_dir.mkdir()
    broker = data_dir / "broker"
    key = signing_key_file(broker / "log.key", "log key")
    (broker / "log.pub").write_text(b64e(key.verify_key.public) + "\n")
    names = ["witness.gt-justice", "witness.cr-police", "witness.jm-justice"]
    ws = [WitnessProc(n, tmp_path / n, broker / "log.pub", free_port()).start() for n in names]
    trust = {"quorum": 2, "witnesses": [{"name": w.name, "key": w.vkey, "url": w.url} for w in ws]}
    (broker / "witnesses.json").write_text(json.dumps(trust))
    (tmp_path / "trust.json").write_text(json.dumps(trust))
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(3000))
    registry.close()
    problem, _ = sequence(data_dir)
    assert problem == ""
    yield data_dir, ws
    for w in ws:
        if w.proc is not None:
            w.stop()


def verify(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    trust = str(data_dir.parent / "trust.json")
    return run_cli("audit", "verify", "--witnesses", trust, *extra, data_dir=data_dir)


def truncate(conn: sqlite3.Connection) -> None:
    (last_seq,) = conn.execute('SELECT event_seq FROM log_entry WHERE "index" = 2499').fetchone()
    conn.execute('DELETE FROM log_entry WHERE "index" >= 2500')
    conn.execute("DELETE FROM merkle_node WHERE (idx + 1) * (1 << level) > 2500")
    conn.execute("DELETE FROM tree_head WHERE tree_size > 2500")
    conn.execute("DELETE FROM audit_event WHERE seq > ?", (last_seq,))


def test_the_checkpoint_is_cosigned_and_verify_requires_the_quorum(witnessed) -> None:
    data_dir, ws = witnessed
    note = read_checkpoint(data_dir / "broker")
    assert note is not None
    assert note.checkpoint().size == 3000
    assert {s.name for s in note.signatures} == {ORIGIN, *(w.name for w in ws)}
    ok = verify(data_dir)
    assert ok.returncode == 0, ok.stderr
    assert "witnessed: size 3000 cosigned by 3 of 3 witnesses (quorum 2" in ok.stdout
    assert ok.stderr == ""
    # By default, the broker's own witnesses file: the quorum is required, and verify says
    # whose list it is (an auditor independent of the operator passes their own).
    own = run_cli("audit", "verify", data_dir=data_dir)
    assert own.returncode == 0, own.stderr
    assert "witnessed: size 3000 cosigned by 3 of 3 witnesses (quorum 2" in own.stdout
    assert "the witnesses are the broker's own list" in own.stderr
    assert "passes their own with --witnesses FILE" in own.stderr
    # --witness NAME=KEY: every witness named is required unless --quorum says fewer.
    pairs = [a for w in ws for a in ("--witness", f"{w.name}={w.vkey}")]
    ok = run_cli("audit", "verify", *pairs, "--quorum", "3", data_dir=data_dir)
    assert ok.returncode == 0, ok.stderr
    # A witness the verifier trusts that did not cosign: named as missing.
    other = WitnessProc("witness.bz-police", data_dir.parent / "bz", ws[0].log_pub, free_port())
    other.start()
    other.stop()
    msg = one_line_error(
        run_cli("audit", "verify", "--witness", f"{other.name}={other.vkey}", data_dir=data_dir)
    )
    assert "audit log not witnessed" in msg
    assert "witness.bz-police (no cosignature)" in msg


def test_the_forged_history_gets_no_cosignature_and_verify_refuses_it(witnessed) -> None:
    data_dir, ws = witnessed
    cosigned_before = (data_dir / "broker" / CHECKPOINT_FILE).read_bytes()
    tamper.attack(data_dir / "istmo.db", truncate)
    # On the log key alone the truncated log is consistent again, and passes (S-05): what
    # verify did by default before, and what it now does only when told, with a warning.
    alone = run_cli("audit", "verify", "--trust-log-key-alone", data_dir=data_dir)
    assert alone.returncode == 0, alone.stderr
    assert "does not protect against whoever holds the log key" in alone.stderr
    # By default verify requires the quorum, and refuses: with the auditor's trust file, by
    # option or $ISTMO_AUDIT_WITNESSES, and with the broker's own witnesses.json.
    msg = one_line_error(verify(data_dir))
    assert "the witnesses cosigned size 3000" in msg
    assert "holds 2500 entries: it was truncated" in msg
    assert one_line_error(run_cli("audit", "verify", data_dir=data_dir)) == msg
    env = {**os.environ, "ISTMO_AUDIT_WITNESSES": str(data_dir.parent / "trust.json")}
    by_env = run_istmo([ISTMO, "audit", "verify", "--data-dir", str(data_dir)], env=env)
    assert one_line_error(by_env) == msg

    # Regrown to 3000 with other events and signed with the log key: same size, other root.
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(500, 10_000, tag="other"))
    problem, out = sequence(data_dir)
    assert "NOT published" in out[-1]
    assert problem.count("refused (409") == 3, problem
    assert all("409" in w.stderr for w in ws)
    assert (data_dir / "broker" / CHECKPOINT_FILE).read_bytes() == cosigned_before
    msg = one_line_error(verify(data_dir))
    assert "cosigned root" in msg
    assert "it was rewritten" in msg

    # Grown past it: the consistency proof from 3000 fails at every witness.
    registry.record([], events(400, 20_000, tag="more"))
    registry.close()
    problem, _ = sequence(data_dir)
    assert problem.count("refused (422") == 3, problem
    assert "rewritten" in one_line_error(verify(data_dir))

    # Deleting the checkpoint does not help either.
    (data_dir / "broker" / CHECKPOINT_FILE).unlink()
    assert "no checkpoint" in one_line_error(verify(data_dir))


def monitor(data_dir: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("audit", "monitor", "--state", str(state), *extra, data_dir=data_dir)


def test_the_monitor_adopts_only_witnessed_heads_and_refuses_the_forged_history(
    witnessed, tmp_path: Path
) -> None:
    data_dir, ws = witnessed
    trust = str(data_dir.parent / "trust.json")
    state = tmp_path / "monitor.json"
    # The quorum cosigned size 3000: the monitor adopts it.
    r = monitor(data_dir, state, "--witnesses", trust)
    assert r.returncode == 0, r.stderr
    assert "witnessed: size 3000 cosigned by 3 of 3 witnesses (quorum 2" in r.stdout
    assert "the monitor's state is now size 3000" in r.stdout
    # The witnesses down, the log grows to 3500 signed by its key alone: seen, not adopted.
    for w in ws:
        w.stop()
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(500, 5_000, tag="later"))
    registry.close()
    problem, _ = sequence(data_dir)
    assert "unreachable" in problem
    r = monitor(data_dir, state, "--witnesses", trust)
    assert r.returncode == 0, r.stderr
    assert "tree head size 3500" in r.stdout
    assert "consistent with size 3000" in r.stdout
    assert "the latest head, size 3500, is not witnessed yet: seen, not adopted" in r.stdout
    assert "the monitor's state stays at size 3000" in r.stdout
    assert json.loads(state.read_text())["head"]["head"]["tree_size"] == 3000
    # By default, the broker's own witnesses file, said so, as verify does.
    own = monitor(data_dir, tmp_path / "own.json")
    assert own.returncode == 0, own.stderr
    assert "the monitor's state is now size 3000" in own.stdout
    assert "the witnesses are the broker's own list" in own.stderr

    # The forged history (truncated to 2500, re-signed with the log key): on the log key
    # alone a new monitor pins it; by default it raises the alarm, as does the old state.
    tamper.attack(data_dir / "istmo.db", truncate)
    alone = monitor(data_dir, tmp_path / "alone.json", "--trust-log-key-alone")
    assert alone.returncode == 0, alone.stderr
    assert "tree head size 2500" in alone.stdout
    assert "does not protect against whoever holds the log key" in alone.stderr
    fresh = tmp_path / "fresh.json"
    r = monitor(data_dir, fresh)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "ALARM: rollback: the witnesses cosigned size 3000" in r.stderr
    assert "latest head is at size 2500: it was truncated" in r.stderr
    assert json.loads(fresh.read_text())["head"] is None  # nothing adopted
    r = monitor(data_dir, state, "--witnesses", trust)
    assert r.returncode == 3
    assert "rollback" in r.stderr

    # Regrown to 3000 with other events: the cosigned root is not the log's any more.
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(500, 10_000, tag="other"))
    registry.close()
    sequence(data_dir)
    fresh.unlink()
    r = monitor(data_dir, fresh)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "ALARM: fork: the witnesses cosigned root" in r.stderr
    assert "its history was rewritten" in r.stderr

    # Without its checkpoint the log is not witnessed: reported, not adopted (exit 1).
    (data_dir / "broker" / CHECKPOINT_FILE).unlink()
    fresh.unlink()
    r = monitor(data_dir, fresh)
    msg = one_line_error(r)
    assert "audit log not witnessed: no checkpoint" in msg
    assert "tree head size 3000 seen, not adopted" in msg
    assert "pinned log key" in r.stdout  # what it saw
    assert not fresh.exists()


def test_one_witness_down_still_publishes_with_the_quorum(witnessed) -> None:
    data_dir, ws = witnessed
    ws[2].stop()
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(500, 5_000, tag="later"))
    registry.close()
    problem, _ = sequence(data_dir)
    assert "witness.jm-justice unreachable" in problem
    note = read_checkpoint(data_dir / "broker")
    assert note is not None
    assert note.checkpoint().size == 3500
    ok = verify(data_dir)
    assert ok.returncode == 0, ok.stderr
    assert "size 3500 cosigned by 2 of 3" in ok.stdout
    msg = one_line_error(verify(data_dir, "--quorum", "3"))
    assert "has 2 of the 3 witness cosignatures required" in msg
    assert "witness.jm-justice (no cosignature)" in msg
    # Back up, it is asked from the size it cosigned (3000) with a proof, and cosigns.
    ws[2].start()
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(10, 6_000, tag="again"))
    registry.close()
    problem, _ = sequence(data_dir)
    assert problem == ""
    assert "size 3510 cosigned by 3 of 3" in verify(data_dir).stdout


def test_a_restarted_witness_keeps_its_key_and_state(witnessed) -> None:
    data_dir, ws = witnessed
    w = ws[0]
    vkey = w.vkey
    w.stop()
    assert (w.state / "witness.key").stat().st_mode & 0o777 == 0o600
    w.start()
    assert w.vkey == vkey
    assert "last cosigned size 3000" in w.out_file.read_text()
    # An older checkpoint, validly signed by the log key: 409 with the size it knows.
    key = signing_key_file(data_dir / "broker" / "log.key", "log key")
    note = sign_checkpoint(Checkpoint(ORIGIN, 2000, bytes(32)), key)
    r = httpx.post(
        f"{w.url}/add-checkpoint", content=format_add_checkpoint(AddCheckpoint(0, (), note))
    )
    assert r.status_code == 409
    assert r.headers["content-type"] == "text/x.tlog.size"
    assert r.text == "3000\n"


def test_the_witness_refuses_bad_requests(witnessed) -> None:
    data_dir, ws = witnessed
    w = ws[1]
    key = signing_key_file(data_dir / "broker" / "log.key", "log key")
    note = sign_checkpoint(Checkpoint(ORIGIN, 3500, bytes(32)), key)

    def post(body: bytes, **headers: str) -> httpx.Response:
        return httpx.post(f"{w.url}/add-checkpoint", content=body, headers=headers)

    # A bad consistency proof from the size it cosigned: 422, state unchanged.
    bad_proof = AddCheckpoint(3000, tuple(bytes([i]) * 32 for i in range(4)), note)
    r = post(format_add_checkpoint(bad_proof))
    assert r.status_code == 422
    assert "consistency proof 3000->3500 fails" in r.text
    assert json.loads((w.state / "state.json").read_text())["logs"][ORIGIN]["size"] == 3000
    # Signed by another key: 403; another log: 404; malformed: 400; old > new: 400.
    forged = sign_checkpoint(Checkpoint(ORIGIN, 3500, bytes(32)), SigningKey.generate())
    assert post(format_add_checkpoint(AddCheckpoint(3000, (), forged))).status_code == 403
    other = sign_checkpoint(Checkpoint("other.example/log", 1, bytes(32)), key)
    assert post(format_add_checkpoint(AddCheckpoint(0, (), other))).status_code == 404
    assert post(b"old 1\n\nnot a note").status_code == 400
    small = sign_checkpoint(Checkpoint(ORIGIN, 10, bytes(32)), key)
    assert post(format_add_checkpoint(AddCheckpoint(3000, (), small))).status_code == 400
    # Another Host (DNS rebinding): 421, and an oversized body: 413.
    assert post(format_add_checkpoint(bad_proof), host="evil.example").status_code == 421
    assert post(b"x" * 30_000).status_code == 413
    assert "refused (422)" in w.stderr
    assert "PRIVATE" not in w.stderr
    assert key.private.hex() not in w.stderr


def test_up_with_local_witnesses_publishes_cosigned_checkpoints(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "istmo", extra=("--witnesses", "3")).start()
    try:
        assert "witnesses checkpoints need 2 of 3 cosignatures" in up.output
        trust = up.data_dir / "broker" / "witnesses.json"
        r = eventually_sync(
            lambda: run_cli("audit", "verify", "--witnesses", str(trust), data_dir=up.data_dir),
            until=lambda r: r.returncode == 0 and "cosigned by 3 of 3" in r.stdout,
            what="a checkpoint cosigned by the three local witnesses",
            interval=0.5,
        )
        assert "(quorum 2: witness-1.local, witness-2.local, witness-3.local)" in r.stdout
        # From outside, over the HTTP API, with the SDK's verifier.
        url = f"http://127.0.0.1:{up.ports['api']}"
        pub = str(up.data_dir / "broker" / "log.pub")
        args = ("audit", "verify", "--from-url", url, "--as", "auditor", "--log-key", pub)
        remote = run_cli(*args, "--witnesses", str(trust), data_dir=up.data_dir)
        assert remote.returncode == 0, remote.stderr
        assert "witnessed: size" in remote.stdout
        assert "cosigned by 3 of 3 witnesses" in remote.stdout
        # The remote monitor adopts the head the quorum cosigned.
        state = str(tmp_path / "monitor.json")
        mon = ("audit", "monitor", "--from-url", url, "--as", "auditor", "--state", state)
        watched = run_cli(*mon, "--witnesses", str(trust), data_dir=up.data_dir)
        assert watched.returncode == 0, watched.stderr
        assert "cosigned by 3 of 3 witnesses" in watched.stdout
        assert "the monitor's state is now size" in watched.stdout
        # A witness key the checkpoint does not carry: refused, and named.
        stranger = "witness.bz-police=" + b64e(SigningKey.generate().verify_key.public)
        msg = one_line_error(run_cli(*args, "--witness", stranger, data_dir=up.data_dir))
        assert "witness.bz-police (no cosignature)" in msg
    finally:
        assert up.stop() == 0, up.output
    # Started again without --witnesses: the local witnesses file is gone with them.
    again = UpProcess(up.data_dir, ports=up.ports).start()
    try:
        assert "removed the local witnesses file" in again.output
        assert not (up.data_dir / "broker" / "witnesses.json").exists()
    finally:
        assert again.stop() == 0, again.output


def test_a_replayed_older_checkpoint_is_caught_by_asking_the_witnesses(witnessed) -> None:
    data_dir, ws = witnessed
    stored = data_dir / "broker" / CHECKPOINT_FILE
    genuine_3000 = stored.read_bytes()
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(500, 7_000, tag="newer"))
    registry.close()
    assert sequence(data_dir)[0] == ""
    assert read_checkpoint(data_dir / "broker").checkpoint().size == 3500  # type: ignore[union-attr]

    def truncate_to_3000(conn: sqlite3.Connection) -> None:
        (last,) = conn.execute('SELECT event_seq FROM log_entry WHERE "index" = 2999').fetchone()
        conn.execute('DELETE FROM log_entry WHERE "index" >= 3000')
        conn.execute("DELETE FROM merkle_node WHERE (idx + 1) * (1 << level) > 3000")
        conn.execute("DELETE FROM tree_head WHERE tree_size > 3000")
        conn.execute("DELETE FROM audit_event WHERE seq > ?", (last,))

    tamper.attack(data_dir / "istmo.db", truncate_to_3000)
    stored.write_bytes(genuine_3000)  # an older checkpoint, genuinely cosigned
    # The checkpoint alone cannot tell: it is genuine and the log holds its tree.
    assert verify(data_dir).returncode == 0
    msg = one_line_error(verify(data_dir, "--ask-witnesses"))
    assert "cosigned size 3500, beyond the checkpoint at 3000" in msg
    # Nothing changed at the witnesses by asking.
    for w in ws:
        assert json.loads((w.state / "state.json").read_text())["logs"][ORIGIN]["size"] == 3500
