"""The README's acceptance path, through the real `istmo` command."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from broker.audit.events import decided_groups
from clients.cli import main as cli_main
from tests.stackproc import UpProcess, free_port, interrupt, run_cli
from tests.waiting import eventually_sync

TITLE = "Go-fast boat sighted off Puerto Barrios"
BODY = "CANARY-7f3a9c Two go-fast boats, 40 bales, heading north-east at 03:10."


@pytest.fixture
def up(tmp_path: Path):
    proc = UpProcess(tmp_path / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def publish(data_dir: Path, *extra: str, who: str = "gt-police", rel_to: str = "SICA"):
    report = data_dir.parent / "report.md"
    report.write_text(BODY)
    return run_cli(
        "publish",
        "--as",
        who,
        "--topic",
        "drug-trafficking",
        "--classification",
        "RESTRICTED",
        "--tlp",
        "AMBER",
        "--rel-to",
        rel_to,
        "--title",
        TITLE,
        "--body-file",
        str(report),
        *extra,
        data_dir=data_dir,
    )


def test_publish_receive_receipts_and_denial(up: UpProcess) -> None:
    d = up.data_dir
    pub = publish(d)
    assert pub.returncode == 0, pub.stderr
    bid = pub.stdout.strip()
    assert len(bid) == 36
    assert "accepted" in pub.stderr

    got = run_cli(
        "receive", "--as", "rc-drugs", "--count", "1", "--timeout", "10", "--json", data_dir=d
    )
    assert got.returncode == 0, got.stderr
    line = json.loads(got.stdout)
    assert line["id"] == bid
    assert line["originator"] == "gt-police"
    assert line["title"] == TITLE
    assert line["body"] == BODY
    assert line["labels"]["rel_to"] == ["SICA"]
    assert {"id", "originator", "labels", "title", "body", "received_at"} <= set(line)

    # A CARICOM-only ministry that follows the topic gets nothing ...
    none = run_cli(
        "receive", "--as", "jm-police", "--count", "1", "--timeout", "2", "--json", data_dir=d
    )
    assert none.returncode == 1
    assert none.stdout == ""
    # ... and is told so in one line: how many the policy withheld, never which.
    (told,) = none.stderr.splitlines()
    assert "nothing waiting; the policy withheld 1 bulletin from jm-police (latest " in told
    assert bid not in told
    asked = run_cli("withheld", "--as", "jm-police", "--json", data_dir=d)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["withheld"] == 1
    recipient = run_cli("withheld", "--as", "rc-drugs", data_dir=d)
    assert recipient.stdout == "rc-drugs: the policy has withheld no bulletin from you\n"
    # ... and its denial is recorded with the deciding policy and the policy version: in
    # the bulletin's one decision record and one bulletin.decided event (ADR 8).
    db = sqlite3.connect(d / "istmo.db", timeout=60)
    (groups,) = db.execute(
        "SELECT groups FROM decision_record WHERE bulletin_id=?", (bid,)
    ).fetchone()
    (kept,) = [g for g in json.loads(groups) if "jm-police" in g["agencies"]]
    assert (kept["outcome"], kept["policy_ids"]) == ("default_deny", [])  # no policy grants it
    assert "default deny" in kept["reasons"][0]
    (data,) = db.execute(
        "SELECT data FROM audit_event WHERE type='bulletin.decided' AND bulletin_id=?", (bid,)
    ).fetchone()
    decided = json.loads(data)
    (logged,) = [g for g in decided_groups(decided) if "jm-police" in g.agencies]
    assert (logged.outcome, logged.policy_ids) == ("default_deny", ())
    assert decided["policy_version"]
    status = run_cli("status", "--as", "gt-police", bid, "--json", data_dir=d)
    denied = {x["agency"]: x for x in json.loads(status.stdout)["denied"]}
    assert "default deny" in denied["jm-police"]["reasons"][0]
    summary = run_cli("status", "--as", "gt-police", bid, data_dir=d)
    assert summary.returncode == 0, summary.stderr
    assert summary.stdout.startswith(f"{bid}: accepted under policy ")
    denials = summary.stdout.split("  denied by default deny (")[1]
    assert "jm-police" in denials.split("  denied by")[0]
    # Another agency's bulletin: one line, non-zero, nothing about it.
    not_theirs = run_cli("status", "--as", "hn-police", bid, data_dir=d)
    assert not_theirs.returncode == 1
    assert not_theirs.stdout == ""
    assert "no bulletin of yours" in not_theirs.stderr
    assert bid not in not_theirs.stderr

    receipts = run_cli("receipts", "--as", "gt-police", bid, "--json", data_dir=d)
    assert receipts.returncode == 0, receipts.stderr
    rows = {r["agency"]: r["received_at"] for r in json.loads(receipts.stdout)["recipients"]}
    assert "jm-police" not in rows
    if rows["rc-drugs"] is None:  # its receipt may still be on its way
        _wait_for_receipt(d, bid, "rc-drugs")
    assert rows["hn-police"] is None

    # Only the originator sees receipts; to anyone else the bulletin does not exist.
    other = run_cli("receipts", "--as", "hn-police", bid, data_dir=d)
    assert other.returncode == 1
    assert "no such bulletin" in other.stderr
    assert "Traceback" not in other.stderr

    # The originator checks the receipts itself, against the envelope it published.
    sent = publish(d, "--json")
    assert sent.returncode == 0, sent.stderr
    second = json.loads(sent.stdout)
    (recorded,) = db.execute(
        "SELECT envelope_digest FROM bulletin WHERE id=?", (second["id"],)
    ).fetchone()
    assert second["envelope_digest"] == recorded
    # A second receiver of an agency asks for no pushes (ADR 38); the queue still delivers.
    got = run_cli(
        "receive", "--as", "rc-drugs", "--count", "1", "--timeout", "10", "--no-push", data_dir=d
    )  # fmt: skip
    assert got.returncode == 0, got.stderr

    def verified() -> subprocess.CompletedProcess[str]:
        return run_cli(
            "receipts", "--as", "gt-police", second["id"], "--verify",
            "--digest", second["envelope_digest"], data_dir=d,
        )  # fmt: skip

    shown = eventually_sync(
        verified, until=lambda r: "  rc-drugs             verified " in r.stdout,
        what="rc-drugs's receipt verified", interval=0.2,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "checked against the envelope you published" in shown.stdout
    assert "FAILED (" not in shown.stdout
    assert ", 0 FAILED\n" in shown.stdout
    (rc,) = [line for line in shown.stdout.splitlines() if line.split()[0] == "rc-drugs"]
    assert "(sig-" in rc
    assert "not received yet" in shown.stdout  # hn-police has not received it
    # Without --digest: the broker's, and it says so; with another envelope's: FAILED, exit 1.
    theirs = run_cli(
        "receipts", "--as", "gt-police", second["id"], "--verify", "--json", data_dir=d
    )
    assert theirs.returncode == 0, theirs.stderr
    assert json.loads(theirs.stdout)["digest_from"] == "broker"
    wrong = run_cli(
        "receipts", "--as", "gt-police", second["id"], "--verify", "--digest", "0" * 64,
        data_dir=d,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "rc-drugs" in wrong.stdout
    assert "FAILED (digest_mismatch)" in wrong.stdout


def _wait_for_receipt(d: Path, bid: str, agency: str) -> None:
    def received_at() -> dict[str, int | None]:
        r = run_cli("receipts", "--as", "gt-police", bid, "--json", data_dir=d)
        return {x["agency"]: x["received_at"] for x in json.loads(r.stdout)["recipients"]}

    eventually_sync(
        received_at, until=lambda rows: rows.get(agency), what=f"{agency}'s receipt", interval=0.2
    )


def test_offline_agency_receives_after_restart_with_same_keys(tmp_path: Path) -> None:
    d = tmp_path / "istmo"
    first = UpProcess(d).start()
    try:
        keystore = (d / "keys" / "hn-police.json").read_bytes()
        directory_key = (d / "broker" / "directory.key").read_bytes()
        pub = publish(d)
        assert pub.returncode == 0, pub.stderr
        bid = pub.stdout.strip()
    finally:
        assert first.stop() == 0, first.output
    assert not (d / "stack.json").exists()

    second = UpProcess(d, ports=first.ports).start()
    try:
        assert "loaded the demo directory" not in second.output
        assert (d / "keys" / "hn-police.json").read_bytes() == keystore
        assert (d / "broker" / "directory.key").read_bytes() == directory_key
        got = run_cli(
            "receive", "--as", "hn-police", "--count", "1", "--timeout", "10", "--json", data_dir=d
        )
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["id"] == bid
        # Received once: a second receive finds nothing new.
        again = run_cli(
            "receive", "--as", "hn-police", "--count", "1", "--timeout", "1", data_dir=d
        )
        assert again.returncode == 1
    finally:
        assert second.stop() == 0, second.output


def test_broker_never_holds_plaintext(up: UpProcess) -> None:
    d = up.data_dir
    # A file of several chunks, a canary on every line, and a name that is a canary too.
    attached = d.parent / "CANARY-name-31c4.txt"
    lines = [f"CANARY-att-9b2e line {i:07d} of the seized ledger\n" for i in range(40_000)]
    attached.write_text("".join(lines))
    pub = publish(d, "--attach", str(attached))
    assert pub.returncode == 0, pub.stderr
    inbox = d.parent / "inbox"  # the recipient's own folder, outside the broker's
    got = run_cli(
        "receive",
        "--as",
        "sv-police",
        "--count",
        "1",
        "--timeout",
        "10",
        "--save-attachments",
        str(inbox),
        data_dir=d,
    )
    assert got.returncode == 0, got.stderr
    assert BODY in got.stdout  # the recipient did see it
    (saved,) = inbox.glob("*/CANARY-name-31c4.txt")
    assert saved.read_bytes() == attached.read_bytes()  # and the file, whole
    assert f"attached: CANARY-name-31c4.txt (text/plain, {attached.stat().st_size} bytes)" in (
        got.stdout
    )
    up.stop()
    needles = [BODY.encode(), TITLE.encode(), b"CANARY-7f3a9c", b"CANARY-att-9b2e"]
    needles += [b"CANARY-name-31c4", lines[12345].encode()]
    hits = []
    for path in d.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n!r}" for n in needles if n in data]
    logs = up.output.encode()
    hits += [f"up log: {n!r}" for n in needles if n in logs]
    assert hits == []
    # The SDK's own store (beside the keystore) keeps ids and digests only.
    stores = list((d / "keys").glob("*.received.sqlite"))
    assert stores
    # Keystores are private to their owner.
    for ks in (d / "keys").glob("*.json"):
        assert ks.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (
            ("publish", "--as", "xx-nobody"),
            "no keystore for agency 'xx-nobody'",
            "check the agency id, or pass the --data-dir that holds its keystore",
        ),
        (("receive", "--as", "/nonexistent/ks.json"), "no keystore at /nonexistent/ks.json", None),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str, hint: str | None
) -> None:
    """One line of error, and the hint (what to do) on a line of its own, if any."""
    extra = (
        (
            "--topic",
            "migration",
            "--classification",
            "RESTRICTED",
            "--tlp",
            "AMBER",
            "--rel-to",
            "SICA",
            "--title",
            "t",
            "--body",
            "b",
        )
        if args[0] == "publish"
        else ()
    )
    r = run_cli(*args, *extra, data_dir=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"istmo: {message}"), r.stderr
    assert lines[1:] == ([f"  hint: {hint}"] if hint else []), r.stderr


def test_cli_without_a_running_broker(tmp_path: Path, up: UpProcess) -> None:
    # A valid keystore, but no stack for this data dir: say so, and what to do.
    r = run_cli(
        "receive",
        "--as",
        str(up.data_dir / "keys" / "gt-police.json"),
        data_dir=tmp_path / "elsewhere",
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"istmo: broker not running: no {tmp_path / 'elsewhere' / 'stack.json'}",
        "  hint: start it with `istmo up`, or pass --nats-url",
    ], r.stderr
    # A stack file pointing at a dead port: name the URL.
    port = free_port()
    r = run_cli(
        "receive",
        "--as",
        str(up.data_dir / "keys" / "gt-police.json"),
        "--nats-url",
        f"nats://127.0.0.1:{port}",
        data_dir=tmp_path,
    )
    assert r.returncode == 1
    assert f"broker not running at nats://127.0.0.1:{port}" in r.stderr


def test_label_not_allowed(up: UpProcess) -> None:
    r = publish(up.data_dir, rel_to="SICA,ATLANTIS")
    assert r.returncode == 1
    (line,) = [ln for ln in r.stderr.splitlines() if "label not allowed" in ln]
    assert "is not a jurisdiction of the directory" in line
    assert "ATLANTIS" not in line  # the refusal names the label's place, not its value
    assert "Traceback" not in r.stderr
    r = publish(up.data_dir, "--source-grade", "Z9")
    assert r.returncode == 1
    assert "label not allowed: source_grade" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_port_taken_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        proc = UpProcess(
            tmp_path / "istmo", ports={"nats": taken, "http": free_port(), "api": free_port()}
        )
        with pytest.raises(RuntimeError, match=f"port {taken} is taken"):
            proc.start(timeout=30)


def test_help_explains_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli("publish", "--help", data_dir=tmp_path)  # the console script itself
    assert r.returncode == 0
    assert "--data-dir" in r.stdout
    # The rest in this process: the same parser, without paying an interpreter's start
    # (about a second of CPU) per command.
    for cmd in ("receive", "receipts", "status", "up", "relay"):
        with pytest.raises(SystemExit) as exit_:
            cli_main([cmd, "--help"])
        assert exit_.value.code == 0
        assert "--data-dir" in capsys.readouterr().out, cmd


def test_follow_keeps_receiving_until_ctrl_c(up: UpProcess) -> None:
    import queue
    import subprocess
    import threading

    from tests.stackproc import ISTMO

    follower = subprocess.Popen(
        [
            ISTMO,
            "receive",
            "--as",
            "hn-police",
            "--follow",
            "--json",
            "--data-dir",
            str(up.data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ids = []
        for _ in range(2):
            pub = publish(up.data_dir, rel_to="HN")
            assert pub.returncode == 0, pub.stderr
            ids.append(pub.stdout.strip())
        assert follower.stdout is not None
        out: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [out.put(x) for x in follower.stdout], daemon=True).start()
        lines = [json.loads(out.get(timeout=20)) for _ in range(2)]
        assert [x["id"] for x in lines] == ids
    finally:
        _out, err = interrupt(follower)
    assert follower.returncode == 130
    assert "Traceback" not in err


def test_http_api_serves_health_and_the_signed_directory(up: UpProcess) -> None:
    import httpx

    from schemas.directory import open_excerpt
    from schemas.keystore import KeystoreFile

    base = f"http://127.0.0.1:{up.ports['api']}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").json() == {"nats": "ok", "database": "ok"}
    pinned = KeystoreFile.parse((up.data_dir / "keys" / "rc-drugs.json").read_bytes())
    excerpt = open_excerpt(httpx.get(f"{base}/v1/directory").content, pinned.pinned_directory_key())
    ids = {a.id for a in excerpt.agencies}
    assert len(ids) == 85
    assert {"gt-police", "jm-justice", "rc-drugs", "rc-observatory", "auditor"} <= ids
    assert "cr-military" not in ids  # Costa Rica has no army
    gt = next(a for a in excerpt.agencies if a.id == "gt-police")
    assert (gt.state, gt.sector, gt.status) == ("GT", "police", "active")
    assert gt.encryption_key is not None
    assert gt.encryption_key.kem == "MLKEM768-X25519"
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/healthz", "/readyz", "/v1/directory", "/v1/policy"} <= set(spec["paths"])


def test_two_ups_at_once_on_a_new_directory(tmp_path: Path) -> None:
    import subprocess

    from tests.stackproc import ISTMO

    d = tmp_path / "istmo"
    ports = [(free_port(), free_port(), free_port()) for _ in range(2)]
    procs = [
        subprocess.Popen(
            [
                ISTMO,
                "up",
                "--data-dir",
                str(d),
                "--nats-port",
                str(a),
                "--nats-http-port",
                str(b),
                "--api-port",
                str(c),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for a, b, c in ports
    ]
    try:
        eventually_sync((d / "stack.json").exists, what="one istmo up to be ready", timeout=180)
        loser = eventually_sync(
            lambda: next((p for p in procs if p.poll() is not None), None),
            what="the other istmo up to give up",
        )
        out = loser.stdout.read() if loser.stdout else ""
        assert loser.returncode == 1
        assert "another istmo up is already running" in out
        assert "Traceback" not in out
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(__import__("signal").SIGINT)
                p.wait(timeout=30)
            if p.stdout:
                p.stdout.close()
    db = sqlite3.connect(d / "istmo.db", timeout=60)
    (keys,) = db.execute("SELECT count(*) FROM signing_key").fetchone()
    (agencies,) = db.execute("SELECT count(*) FROM agency").fetchone()
    assert keys == agencies == 85


def test_a_killed_up_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    import os
    import signal

    first = UpProcess(tmp_path / "istmo").start()
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGKILL)  # nats-server survives its parent
    first.proc.wait()
    second = UpProcess(tmp_path / "istmo", ports=first.ports).start()
    try:
        assert "left running by an earlier istmo up" in second.output
        got = publish(second.data_dir)
        assert got.returncode == 0, got.stderr
    finally:
        assert second.stop() == 0, second.output
