"""`istmo audit` as an auditor uses it, and the tampering it catches.

Against a running `istmo up` (which sequences the log): tail, search, export and monitor; each
query becomes an `audit.queried` entry (S-22); errors are one line. Against a sealed data
directory, an attacker with database access (who drops the append-only triggers first) edits,
deletes, swaps, forges, re-signs, truncates and regrows; `verify` names the first bad index
(S-05, S-07) and `monitor` alarms on rollback and fork and keeps the evidence (S-06, B-49,
B-50).
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.audit import merkle
from broker.audit.sequencer import SequencerLimits, open_sequencer
from broker.config import Settings
from broker.store.registry import Registry
from schemas.audit import AuditEvent
from schemas.canonical import b64d, b64e, canonical_json
from schemas.keys import SigningKey, VerifyKey
from schemas.treehead import TreeHead, parse_signed_tree_head, sign_tree_head
from tests import tamper
from tests.stackproc import ISTMO, UpProcess, interrupt, publish_args, run_cli
from tests.waiting import eventually_sync

ALARM = 3
# These stacks run no witnesses; the log key's own checks are what these tests are about
# (tests/e2e/test_audit_witness.py verifies with the witness quorum).
LOG_KEY_ALONE = "--trust-log-key-alone"


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed command: one line, and at most one hint line after it."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  hint: ")), r.stderr
    assert lines[0].startswith("istmo: ")
    return "\n".join(lines)


def search(data_dir: Path, *args: str) -> list[dict[str, Any]]:
    r = run_cli("audit", "search", "--json", *args, data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    entries: list[dict[str, Any]] = json.loads(r.stdout)["entries"]
    return entries


# ------------------------------------------------------------------------ a running stack
@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("audit") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def test_up_sequences_the_outbox_and_verify_passes(up: UpProcess) -> None:
    assert "audit log sequenced here" in up.output
    r = eventually_sync(
        lambda: run_cli("audit", "verify", LOG_KEY_ALONE, data_dir=up.data_dir),
        until=lambda r: r.returncode == 0 and "wait for the sequencer" not in r.stdout,
        what="the demo directory's events in the log",
        interval=0.2,
    )
    n = int(r.stdout.split("verified ")[1].split()[0])
    enrolled = search(up.data_dir, "--type", "agency.enrolled", "--limit", "1000")
    assert n >= 3 * len(enrolled) > 0  # each agency: enrolled, two keys registered


def test_auditor_queries_become_audit_entries(up: UpProcess, tmp_path: Path) -> None:
    d = up.data_dir
    found = search(d, "--type", "agency.enrolled", "--agency", "gt-police", "--limit", "3")
    assert [(e["entry"]["type"], e["entry"]["subject"]) for e in found] == [
        ("agency.enrolled", "gt-police")
    ]
    assert run_cli("audit", "tail", "-n", "2", data_dir=d).returncode == 0
    out = tmp_path / "log.jsonl"
    assert run_cli("audit", "export", "--out", str(out), data_dir=d).returncode == 0

    def queried() -> dict[str, dict[str, Any]]:
        got = {e["entry"]["subject"]: e["entry"] for e in search(d, "--type", "audit.queried")}
        return got if {"audit.search", "audit.tail", "audit.export"} <= set(got) else {}

    entries = eventually_sync(queried, what="audit.queried entries", interval=0.2)
    first_search = next(
        e["entry"]
        for e in search(d, "--type", "audit.queried", "--limit", "1000")
        if e["entry"]["data"].get("agency") == "gt-police"
    )
    assert first_search["actor"] == f"local:{getpass.getuser()}"
    assert first_search["data"] == {
        "agency": "gt-police",
        "type": "agency.enrolled",
        "after_index": -1,
        "limit": 3,
        "rows": 1,
    }
    assert entries["audit.tail"]["data"]["rows"] == 2
    assert entries["audit.export"]["data"]["format"] == "jsonl"


def test_tail_follows_new_entries_until_ctrl_c(up: UpProcess, tmp_path: Path) -> None:
    out_file = tmp_path / "follow.out"
    marker = "follow-marker-agency"
    with out_file.open("w") as out:
        proc = subprocess.Popen(
            [ISTMO, "audit", "tail", "-n", "1", "--follow", "--data-dir", str(up.data_dir)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        eventually_sync(out_file.read_text, what="the first page", interval=0.2)
        assert run_cli("audit", "search", "--agency", marker, data_dir=up.data_dir).returncode == 0
        # The sequencer integrates that query; the follower prints it.
        eventually_sync(lambda: marker in out_file.read_text(), what="the new entry", interval=0.2)
    finally:
        _, err = interrupt(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    lines = out_file.read_text().splitlines()
    assert any("audit.queried" in line and marker in line for line in lines), lines


def test_export_rebuilds_the_signed_root(up: UpProcess, tmp_path: Path) -> None:
    jsonl, csv_file = tmp_path / "log.jsonl", tmp_path / "log.csv"
    r = run_cli("audit", "export", "--out", str(jsonl), "--progress", data_dir=up.data_dir)
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr  # the bar, on stderr
    size = int(r.stdout.split("tree size ")[1].split(",")[0])
    root = r.stdout.strip().rsplit("root ", 1)[1]
    lines = jsonl.read_text().splitlines()
    assert len(lines) == size
    tree = merkle.MemoryHashStore()
    for i, line in enumerate(lines):
        doc = json.loads(line)
        leaf = merkle.leaf_hash(canonical_json(doc["entry"]))
        assert doc["index"] == i
        assert b64d(doc["leaf_hash"], field="leaf_hash", max_bytes=32) == leaf
        tree.append([leaf])
    assert b64e(merkle.root(tree, size)) == root
    r = run_cli("audit", "export", "--format", "csv", "--out", str(csv_file), data_dir=up.data_dir)
    assert r.returncode == 0, r.stderr
    rows = csv_file.read_text().splitlines()
    assert rows[0].startswith("index,time,time_iso,type,actor,subject")
    assert len(rows) - 1 >= size


def test_monitor_follows_the_live_log(up: UpProcess, tmp_path: Path) -> None:
    state = tmp_path / "monitor.json"
    first = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=up.data_dir)
    assert first.returncode == 0, first.stderr
    assert "pinned log key sig-" in first.stdout
    size = json.loads(state.read_text())["head"]["head"]["tree_size"]
    run_cli("audit", "search", "--limit", "1", data_dir=up.data_dir)  # one more entry

    def grown() -> str:
        r = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=up.data_dir)
        assert r.returncode == 0, r.stderr
        return r.stdout if f"consistent with size {size}" in r.stdout else ""

    eventually_sync(grown, what="the monitor to see the log grow", interval=0.2)


def test_errors_are_one_line(up: UpProcess, tmp_path: Path) -> None:
    d = up.data_dir
    assert "another sequencer" in one_line_error(run_cli("sequencer", data_dir=d))
    assert "--since" in one_line_error(run_cli("audit", "search", "--since", "soon", data_dir=d))
    assert "1..1000" in one_line_error(run_cli("audit", "search", "--limit", "5000", data_dir=d))
    assert "event type" in one_line_error(run_cli("audit", "search", "--type", "x", data_dir=d))
    missing = tmp_path / "nothing"
    assert "no Istmo database" in one_line_error(run_cli("audit", "verify", data_dir=missing))
    assert not missing.exists()
    bad_out = str(tmp_path / "no-such-dir" / "x.jsonl")
    assert "cannot write" in one_line_error(
        run_cli("audit", "export", "--out", bad_out, data_dir=d)
    )
    state = tmp_path / "state.json"
    state.write_text("{not json")
    msg = one_line_error(
        run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=d)
    )
    assert "monitor state" in msg


# -------------------------------------------------------------------------- tampering
N, BATCH = 3000, 500  # signed heads at 500, 1000, ..., 3000


def events(n: int, start: int = 0, tag: str = "e") -> list[AuditEvent]:
    return [
        AuditEvent(
            event_id=f"{tag}{i}",
            type="bulletin.routed" if i % 3 else "bulletin.denied",
            time=1_767_225_600_000 + i,
            actor="relay",
            subject="gt-police" if i % 2 else "jm-police",
            bulletin_id=f"00000000-0000-4000-8000-{i:012d}",
            data={"n": i},
        )
        for i in range(start, start + n)
    ]


def sequence(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    seq = open_sequencer(settings, limits=SequencerLimits(batch_entries=BATCH), out=print)
    try:
        seq.drain()
    finally:
        seq.close()


@pytest.fixture
def sealed(tmp_path: Path) -> Path:
    data_dir = tmp_path / "istmo"
    data_dir.mkdir()
    registry = Registry(Settings(data_dir=data_dir).db_url)
    registry.record([], events(N))
    registry.close()
    sequence(data_dir)
    return data_dir


def attack(data_dir: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    """Write to the database as an attacker would: drop the triggers, then change rows."""
    tamper.attack(data_dir / "istmo.db", change)


def leaf_of(conn: sqlite3.Connection, index: int) -> dict[str, Any]:
    (leaf,) = conn.execute('SELECT leaf FROM log_entry WHERE "index" = ?', (index,)).fetchone()
    doc: dict[str, Any] = json.loads(leaf)
    return doc


def rewrite_entry(conn: sqlite3.Connection, index: int, *, outbox: bool, log: bool) -> None:
    doc = leaf_of(conn, index)
    doc["subject"] = "xx-nobody"
    new = canonical_json(doc)
    if log:
        conn.execute(
            'UPDATE log_entry SET leaf = ?, leaf_hash = ? WHERE "index" = ?',
            (new, merkle.leaf_hash(new), index),
        )
    if outbox:
        conn.execute(
            "UPDATE audit_event SET subject = 'xx-nobody' WHERE event_id = ?", (doc["event_id"],)
        )


def rebuild_nodes(conn: sqlite3.Connection) -> merkle.MemoryHashStore:
    """Recompute every stored node from the (altered) entries, as a careful attacker would."""
    hashes = [bytes(h) for (h,) in conn.execute('SELECT leaf_hash FROM log_entry ORDER BY "index"')]
    tree = merkle.MemoryHashStore()
    nodes = merkle.append_nodes(tree, 0, hashes)
    tree.put(nodes)
    conn.execute("DELETE FROM merkle_node")
    conn.executemany("INSERT INTO merkle_node (level, idx, hash) VALUES (?, ?, ?)", nodes)
    return tree


def swap(conn: sqlite3.Connection, k: int) -> None:
    a = conn.execute('SELECT event_seq, leaf, leaf_hash FROM log_entry WHERE "index" = ?', (k,))
    b = conn.execute('SELECT event_seq, leaf, leaf_hash FROM log_entry WHERE "index" = ?', (k + 1,))
    row_a, row_b = a.fetchone(), b.fetchone()
    conn.execute('DELETE FROM log_entry WHERE "index" IN (?, ?)', (k, k + 1))
    conn.executemany(
        'INSERT INTO log_entry ("index", event_seq, leaf, leaf_hash) VALUES (?, ?, ?, ?)',
        [(k, *row_b), (k + 1, *row_a)],
    )


def forge_extra(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO audit_event (event_id, type, time, actor, subject, data) "
        "VALUES ('forged', 'bulletin.routed', 1, 'relay', 'gt-police', '{}')"
    )
    (seq,) = conn.execute("SELECT seq FROM audit_event WHERE event_id = 'forged'").fetchone()
    forged = AuditEvent(
        event_id="forged", type="bulletin.routed", time=1, actor="relay", subject="gt-police"
    )
    leaf = canonical_json(forged.model_dump(mode="json"))  # a careful forger: it matches
    conn.execute(
        'INSERT INTO log_entry ("index", event_seq, leaf, leaf_hash) VALUES (?, ?, ?, ?)',
        (N, seq, leaf, merkle.leaf_hash(leaf)),
    )


TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection], None], int, str]] = {
    "entry edited": (
        lambda c: rewrite_entry(c, 1234, outbox=False, log=True),
        1234,
        "differs from audit event",
    ),
    "outbox row edited": (
        lambda c: rewrite_entry(c, 777, outbox=True, log=False),
        777,
        "differs from audit event",
    ),
    "entry and outbox edited, nodes recomputed": (
        lambda c: (rewrite_entry(c, 1234, outbox=True, log=True), rebuild_nodes(c)),
        1000,  # the head at 1500 no longer matches: the change lies in 1000..1499
        "tree head at size 1500 signs root",
    ),
    "entry deleted": (
        lambda c: c.execute('DELETE FROM log_entry WHERE "index" = 2100'),
        2100,
        "entry 2100 is missing",
    ),
    "two entries swapped": (lambda c: swap(c, 1700), 1700, "comes first in the outbox"),
    "entry forged at the end": (forge_extra, N, "covered by no signed tree head"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_the_first_bad_index(sealed: Path, case: str) -> None:
    ok = run_cli("audit", "verify", LOG_KEY_ALONE, data_dir=sealed)
    assert ok.returncode == 0, ok.stderr
    assert f"verified {N} entries and {N // BATCH} signed tree heads" in ok.stdout
    change, index, what = TAMPERING[case]
    attack(sealed, change)
    msg = one_line_error(run_cli("audit", "verify", LOG_KEY_ALONE, data_dir=sealed))
    assert f"first bad index {index}:" in msg
    assert what in msg


def test_verify_refuses_without_witnesses_unless_told_to_trust_the_log_key_alone(
    sealed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No witnesses given, none in $ISTMO_AUDIT_WITNESSES, none configured: refused (exit 1).
    msg = one_line_error(run_cli("audit", "verify", data_dir=sealed))
    assert "no witnesses to check the audit log against" in msg
    assert "--witnesses FILE" in msg
    assert "$ISTMO_AUDIT_WITNESSES" in msg
    assert "hint: for a log without witnesses, --trust-log-key-alone" in msg
    # The opt-out passes a good log, and says what it does not protect against.
    ok = run_cli("audit", "verify", LOG_KEY_ALONE, data_dir=sealed)
    assert ok.returncode == 0, ok.stderr
    assert f"verified {N} entries" in ok.stdout
    assert ok.stderr.strip() == (
        "istmo: WARNING: checked on the log key alone (--trust-log-key-alone): this does not "
        "protect against whoever holds the log key, who can truncate the log and re-sign "
        "its heads; give the witnesses you trust with --witnesses FILE"
    )
    # Opting out and naming witnesses contradict each other; so does asking them.
    trust = tmp_path / "trust.json"
    trust.write_text('{"quorum": 1, "witnesses": []}')
    both = run_cli("audit", "verify", LOG_KEY_ALONE, "--witnesses", str(trust), data_dir=sealed)
    assert "contradict each other" in one_line_error(both)
    ask = run_cli("audit", "verify", LOG_KEY_ALONE, "--ask-witnesses", data_dir=sealed)
    assert "contradicts --trust-log-key-alone" in one_line_error(ask)
    # A trust file without witnesses is no trust, given or from the environment.
    assert "names no witnesses" in one_line_error(
        run_cli("audit", "verify", "--witnesses", str(trust), data_dir=sealed)
    )
    monkeypatch.setenv("ISTMO_AUDIT_WITNESSES", str(trust))
    msg = one_line_error(run_cli("audit", "verify", data_dir=sealed))
    assert "names no witnesses" in msg
    assert "($ISTMO_AUDIT_WITNESSES)" in msg
    monkeypatch.setenv("ISTMO_AUDIT_WITNESSES", str(tmp_path / "missing.json"))
    assert "cannot read the witnesses file" in one_line_error(
        run_cli("audit", "verify", data_dir=sealed)
    )


def test_monitor_refuses_without_witnesses_unless_told_to_trust_the_log_key_alone(
    sealed: Path, tmp_path: Path
) -> None:
    # As verify: no witnesses given or found, refused (exit 1), and nothing pinned.
    state = tmp_path / "monitor.json"
    msg = one_line_error(run_cli("audit", "monitor", "--state", str(state), data_dir=sealed))
    assert "no witnesses to check the audit log against" in msg
    assert "--witnesses FILE" in msg
    assert "$ISTMO_AUDIT_WITNESSES" in msg
    assert "hint: for a log without witnesses, --trust-log-key-alone" in msg
    assert not state.exists()
    # The opt-out adopts the head on the log key alone, and warns.
    ok = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed)
    assert ok.returncode == 0, ok.stderr
    assert f"tree head size {N}" in ok.stdout
    assert ok.stderr.strip() == (
        "istmo: WARNING: checked on the log key alone (--trust-log-key-alone): this does not "
        "protect against whoever holds the log key, who can truncate the log and re-sign "
        "its heads; give the witnesses you trust with --witnesses FILE"
    )
    assert json.loads(state.read_text())["head"]["head"]["tree_size"] == N
    trust = tmp_path / "trust.json"
    trust.write_text('{"quorum": 1, "witnesses": []}')
    both = run_cli(
        "audit", "monitor", "--state", str(state), LOG_KEY_ALONE, "--witnesses", str(trust),
        data_dir=sealed,
    )  # fmt: skip
    assert "contradict each other" in one_line_error(both)


def test_a_head_resigned_over_another_root_with_another_key(sealed: Path, tmp_path: Path) -> None:
    state = tmp_path / "monitor.json"
    assert (
        run_cli(
            "audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed
        ).returncode
        == 0
    )
    mallory = SigningKey.generate()

    def resign(conn: sqlite3.Connection) -> None:
        rewrite_entry(conn, 2600, outbox=True, log=True)
        tree = rebuild_nodes(conn)
        head = TreeHead(
            v=1,
            origin="istmo.local/audit",
            tree_size=N,
            root_hash=b64e(merkle.root(tree, N)),
            timestamp=1,
        )
        sth = sign_tree_head(head, mallory)
        conn.execute(
            "UPDATE tree_head SET root = ?, kid = ?, sig = ?, raw = ?, timestamp = 1 "
            "WHERE tree_size = ?",
            (head.root(), sth.kid, sth.sig, sth.model_dump_json().encode(), N),
        )

    attack(sealed, resign)
    msg = one_line_error(run_cli("audit", "verify", LOG_KEY_ALONE, data_dir=sealed))
    assert "first bad index 2500:" in msg
    assert "tree head at size 3000" in msg
    assert "unknown key" in msg
    r = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed)
    assert r.returncode == ALARM
    assert "ALARM" in r.stderr
    assert "unknown key" in r.stderr


def test_truncated_then_regrown_log_is_caught_by_the_monitor(sealed: Path, tmp_path: Path) -> None:
    state = tmp_path / "monitor.json"
    assert (
        run_cli(
            "audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed
        ).returncode
        == 0
    )
    saved = state.read_text()

    def truncate(conn: sqlite3.Connection) -> None:
        (last_seq,) = conn.execute(
            'SELECT event_seq FROM log_entry WHERE "index" = 2499'
        ).fetchone()
        conn.execute('DELETE FROM log_entry WHERE "index" >= 2500')
        conn.execute("DELETE FROM merkle_node WHERE (idx + 1) * (1 << level) > 2500")
        conn.execute("DELETE FROM tree_head WHERE tree_size > 2500")
        conn.execute("DELETE FROM audit_event WHERE seq > ?", (last_seq,))

    attack(sealed, truncate)
    # The database alone is consistent again: only a monitor's saved head, or witnesses
    # (tests/e2e/test_audit_witness.py), can tell (S-05).
    ok = run_cli("audit", "verify", LOG_KEY_ALONE, data_dir=sealed)
    assert ok.returncode == 0, ok.stderr
    r = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed)
    assert r.returncode == ALARM
    assert "rollback" in r.stderr
    assert "3000" in r.stderr
    again = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed)
    assert again.returncode == ALARM
    assert "not trusted" in again.stderr  # it stopped trusting the log
    assert len(json.loads(state.read_text())["evidence"]) == 2

    # Regrown to the same size with other events: a split view (B-49).
    registry = Registry(Settings(data_dir=sealed).db_url)
    registry.record([], events(500, 10_000, tag="other"))
    sequence(sealed)
    state.write_text(saved)
    r = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed)
    assert r.returncode == ALARM
    assert "split view" in r.stderr
    evidence = [parse_signed_tree_head(json.dumps(h).encode()) for h in _evidence(state)]
    assert [h.head.tree_size for h in evidence] == [N, N]
    assert evidence[0].head.root_hash != evidence[1].head.root_hash  # both signed: proof

    # Regrown past it: the consistency proof fails (a fork).
    registry.record([], events(400, 20_000, tag="more"))
    registry.close()
    sequence(sealed)
    state.write_text(saved)
    r = run_cli("audit", "monitor", "--state", str(state), LOG_KEY_ALONE, data_dir=sealed)
    assert r.returncode == ALARM
    assert "fork" in r.stderr
    assert [h["head"]["tree_size"] for h in _evidence(state)] == [N, N + 400]


def _evidence(state: Path) -> list[dict[str, Any]]:
    evidence: list[dict[str, Any]] = json.loads(state.read_text())["evidence"]
    return evidence


def test_the_log_key_is_its_own(up: UpProcess) -> None:
    # S-07: the log key is private to the broker and is not the directory key.
    broker = up.data_dir / "broker"
    log_key = broker / "log.key"
    assert log_key.stat().st_mode & 0o777 == 0o600
    assert log_key.read_text() != (broker / "directory.key").read_text()
    pub = b64d((broker / "log.pub").read_text().strip(), field="log.pub", max_bytes=32)
    r = run_cli("audit", "verify", LOG_KEY_ALONE, data_dir=up.data_dir)
    assert r.returncode == 0, r.stderr
    assert f"(key {VerifyKey(pub).kid})" in r.stdout


def test_tail_json_and_the_bulletin_in_text_lines(up: UpProcess) -> None:
    d = up.data_dir
    sent = run_cli("publish", "--as", "gt-police", *publish_args("t", "b"), "--json", data_dir=d)
    assert sent.returncode == 0, sent.stderr
    bid = json.loads(sent.stdout)["id"]

    def routed_lines() -> list[str]:
        r = run_cli("audit", "search", "--type", "bulletin.decided", "--bulletin", bid, data_dir=d)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    lines = eventually_sync(routed_lines, what="the bulletin's decided entry", interval=0.2)
    assert all(f"  bulletin {bid}  " in line for line in lines), lines
    tail = run_cli("audit", "tail", "-n", "3", "--json", data_dir=d)
    assert tail.returncode == 0, tail.stderr
    entries = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(entries) == 3
    assert {"index", "leaf_hash", "entry"} == set(entries[0])
