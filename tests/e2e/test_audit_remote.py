"""`istmo audit verify|monitor --from-url`: an auditor checks the log from the HTTP API alone.

In process (the real app over a real data directory, through httpx.ASGITransport): remote
verify passes on an honest log and names the first bad index after each kind of tampering
an attacker with database access can do (the append-only triggers dropped first); remote
monitor pins, follows, and alarms on a rollback, a split view, a fork and a head signed by
another key, keeping the evidence (S-05, S-06, S-07, B-49, B-50).

Against `istmo up` (the console script, real HTTP): the commands as an auditor types them,
their one-line errors, a client without the server's dependencies, and the canary: after a
bulletin is published and received, no audit answer holds its title or body.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from broker.api.guard import ApiLimits
from broker.api.oauth import TokenAuthority, load_token_key
from broker.audit import merkle
from broker.audit.log import AuditLog
from broker.audit.sequencer import SequencerLimits, open_sequencer
from broker.config import Settings
from broker.runtime.app import create_app
from broker.runtime.stack import Stack
from clients.audit_verify import (
    ALARM_EXIT,
    AuditApi,
    LogAltered,
    RemoteReport,
    add_remote_audit_parsers,
    monitor_remote,
    read_log_key,
    verify_command,
    verify_remote,
)
from clients.keystore import load_keystore
from clients.oauth import IstmoHttp
from schemas.audit import AuditEvent
from schemas.canonical import b64e
from schemas.checkpoint import trust_from_options
from schemas.errors import ConfigError
from schemas.keys import SigningKey
from schemas.treehead import TreeHead, parse_signed_tree_head, sign_tree_head
from tests.e2e.test_audit_cli import attack, one_line_error, rebuild_nodes, rewrite_entry, swap
from tests.stackproc import UpProcess, run_cli
from tests.waiting import eventually_sync

BASE = "http://istmo.test"
N, BATCH = 3000, 500  # relay-shaped events after the demo directory's; heads every 500
CANARY_TITLE = "CANARY-TITLE-5d1e0b"
CANARY_BODY = "CANARY-BODY-8a4f27 the informant's name"


def events(n: int, start: int = 0, tag: str = "r") -> list[AuditEvent]:
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


@dataclass
class Sealed:
    """A prepared data directory (demo directory, keystores) with a sequenced log."""

    settings: Settings
    stack: Stack

    def sequence(self) -> None:
        seq = open_sequencer(
            self.settings, limits=SequencerLimits(batch_entries=BATCH), out=lambda _line: None
        )
        try:
            seq.drain()
        finally:
            seq.close()

    def record(self, evs: list[AuditEvent]) -> None:
        assert self.stack.registry is not None
        self.stack.registry.record([], evs)

    def pending(self) -> int:
        log = AuditLog(self.settings.db_url)
        try:
            return log.pending()
        finally:
            log.close()

    def size(self) -> int:
        log = AuditLog(self.settings.db_url)
        try:
            return log.size()
        finally:
            log.close()

    @property
    def log_pub(self) -> Path:
        return self.settings.broker_dir / "log.pub"

    def api(self) -> AuditApi:
        assert self.stack.registry is not None
        assert self.stack.directory is not None
        authority = TokenAuthority(
            self.stack.registry, load_token_key(self.settings.broker_dir), issuer=BASE
        )
        app = create_app(
            self.stack.registry,
            self.stack.directory,
            lambda: True,
            auth=authority,
            limits=ApiLimits(api_rate_per_s=1e6, api_burst=10**6),
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
        keystore = load_keystore(self.settings.keys_dir / "auditor.json")
        return AuditApi(IstmoHttp(BASE, keystore, scope="audit:read", client=client))


@pytest.fixture
def sealed(tmp_path: Path) -> Sealed:
    settings = Settings(data_dir=tmp_path / "istmo")
    stack = Stack(settings, out=lambda _line: None)
    stack.prepare()
    s = Sealed(settings, stack)
    s.record(events(N))
    s.sequence()
    return s


@pytest_asyncio.fixture
async def api(sealed: Sealed) -> AsyncIterator[AuditApi]:
    a = sealed.api()
    yield a
    await a.http.aclose()


async def verify(sealed: Sealed, api: AuditApi, **kw: Any) -> RemoteReport:
    return await verify_remote(api, pinned=read_log_key(sealed.log_pub), **kw)


# ------------------------------------------------------------------------------ verify
async def test_remote_verify_passes_on_an_honest_log(sealed: Sealed, api: AuditApi) -> None:
    size = sealed.size()
    started = time.monotonic()
    report = await verify(sealed, api)
    seconds = time.monotonic() - started
    assert report.ok, report.first
    assert report.entries == size > N
    assert report.heads == size // BATCH + 1  # 500, 1000, ..., 3000, and the end
    assert report.latest is not None
    assert report.latest.tree_size == size
    assert report.inclusion == 32
    assert report.consistency == report.heads - 1  # every earlier head, here
    assert report.pinned
    print(f"remote verify (in process): {size} entries in {seconds:.2f} s")
    # Unpinned: the server's key, noted as such; more proofs with a larger sample.
    unpinned = await verify_remote(api, pinned=None, sample=200)
    assert unpinned.ok
    assert not unpinned.pinned
    assert (unpinned.inclusion, unpinned.consistency) == (200, report.heads - 1)


async def test_a_pinned_key_that_is_not_the_logs_is_refused(sealed: Sealed, api: AuditApi) -> None:
    other = SigningKey.generate().verify_key
    with pytest.raises(LogAltered, match="not the pinned"):
        await verify_remote(api, pinned=other)
    with pytest.raises(LogAltered, match="not 'elsewhere/audit'"):
        await verify_remote(api, pinned=None, origin="elsewhere/audit")


async def test_the_sdk_verify_requires_witnesses_or_the_opt_out(
    sealed: Sealed, api: AuditApi, capsys: pytest.CaptureFixture[str]
) -> None:
    keystore = load_keystore(sealed.settings.keys_dir / "auditor.json")
    kw: dict[str, Any] = {"log_key": sealed.log_pub, "http": api.http}
    with pytest.raises(ConfigError, match="no witnesses to check the audit log") as refused:
        await verify_command(BASE, keystore, **kw)
    assert refused.value.code == "witnesses_required"
    trust = trust_from_options(["w=" + b64e(SigningKey.generate().verify_key.public)], None)
    with pytest.raises(ConfigError, match="not both"):
        await verify_command(BASE, keystore, **kw, trust=trust, trust_log_key_alone=True)
    capsys.readouterr()
    assert await verify_command(BASE, keystore, **kw, trust_log_key_alone=True) == 0
    out = capsys.readouterr()
    assert f"verified {sealed.size()} entries" in out.out
    assert "WARNING: checked on the log key alone" in out.err


def resign_head(size: int, edit: int) -> Callable[[sqlite3.Connection], None]:
    """Rewrite entry ``edit``, recompute every node, and sign the head at ``size`` with
    another key (a careful attacker without the log key)."""
    mallory = SigningKey.generate()

    def change(conn: sqlite3.Connection) -> None:
        rewrite_entry(conn, edit, outbox=True, log=True)
        tree = rebuild_nodes(conn)
        head = TreeHead(
            v=1,
            origin="istmo.local/audit",
            tree_size=size,
            root_hash=b64e(merkle.root(tree, size)),
            timestamp=1,
        )
        sth = sign_tree_head(head, mallory)
        conn.execute(
            "UPDATE tree_head SET root = ?, kid = ?, sig = ?, raw = ?, timestamp = 1 "
            "WHERE tree_size = ?",
            (head.root(), sth.kid, sth.sig, sth.model_dump_json().encode(), size),
        )

    return change


def set_leaf(index: int, leaf: bytes, *, rehash: bool) -> Callable[[sqlite3.Connection], None]:
    def change(conn: sqlite3.Connection) -> None:
        if rehash:
            conn.execute(
                'UPDATE log_entry SET leaf = ?, leaf_hash = ? WHERE "index" = ?',
                (leaf, merkle.leaf_hash(leaf), index),
            )
        else:
            conn.execute('UPDATE log_entry SET leaf_hash = ? WHERE "index" = ?', (leaf, index))

    return change


TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection], None], int, str]] = {
    "entry edited": (
        lambda c: rewrite_entry(c, 1234, outbox=False, log=True),
        1234,
        "entry 1234 is not the entry the log signed",
    ),
    "entry and outbox edited, nodes recomputed": (
        lambda c: (rewrite_entry(c, 1234, outbox=True, log=True), rebuild_nodes(c)),
        1000,  # the stored nodes agree with the change: the first head range that fails
        "tree head at size 1500 signs root",
    ),
    "entry deleted": (
        lambda c: c.execute('DELETE FROM log_entry WHERE "index" = 2100'),
        2100,
        "entry 2100 is missing",
    ),
    "two entries swapped": (lambda c: swap(c, 1700), 1700, "entry 1700 is not the entry"),
    "leaf hash edited": (
        set_leaf(900, b"\x00" * 32, rehash=False),
        900,
        "the stored leaf hash is not its bytes' hash",
    ),
    "leaf replaced by other bytes": (
        set_leaf(600, b"<not an event>", rehash=True),
        600,
        "entry 600 is not an audit event",
    ),
    "leaf no JSON library can re-encode": (
        set_leaf(650, b'{"subject":"\\ud800","time":NaN}', rehash=True),
        650,
        "entry 650 is not an audit event",
    ),
    "head re-signed over another root with another key": (
        resign_head(3000, 2600),
        2500,
        "tree head at size 3000: tree head is signed by an unknown key",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
async def test_remote_verify_names_the_first_bad_index(
    sealed: Sealed, api: AuditApi, case: str
) -> None:
    assert (await verify(sealed, api)).ok
    change, index, what = TAMPERING[case]
    attack(sealed.settings.data_dir, change)
    report = await verify(sealed, api)
    assert report.first is not None, case
    assert report.first.index == index, report.first
    assert what in report.first.message, report.first


# ------------------------------------------------------------------------------ monitor
def truncate_to(size: int) -> Callable[[sqlite3.Connection], None]:
    """Drop every entry, node, head and outbox row from ``size`` on (a signed size)."""

    def change(conn: sqlite3.Connection) -> None:
        (last_seq,) = conn.execute(
            'SELECT event_seq FROM log_entry WHERE "index" = ?', (size - 1,)
        ).fetchone()
        conn.execute('DELETE FROM log_entry WHERE "index" >= ?', (size,))
        conn.execute("DELETE FROM merkle_node WHERE (idx + 1) * (1 << level) > ?", (size,))
        conn.execute("DELETE FROM tree_head WHERE tree_size > ?", (size,))
        conn.execute("DELETE FROM audit_event WHERE seq > ?", (last_seq,))

    return change


async def test_remote_monitor_follows_then_alarms_on_rollback_split_view_and_fork(
    sealed: Sealed, api: AuditApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "monitor.json"
    pub = read_log_key(sealed.log_pub)
    assert await monitor_remote(api, state, pinned=pub, trust_log_key_alone=True) == 0
    assert "pinned log key sig-" in capsys.readouterr().out
    first = json.loads(state.read_text())["head"]["head"]["tree_size"]
    sealed.record(events(10, 50_000, tag="more"))
    sealed.sequence()
    assert await monitor_remote(api, state, pinned=None, trust_log_key_alone=True) == 0
    assert f"consistent with size {first}" in capsys.readouterr().out
    size = json.loads(state.read_text())["head"]["head"]["tree_size"]
    assert size > first
    saved = state.read_text()

    attack(sealed.settings.data_dir, truncate_to(2500))
    assert await monitor_remote(api, state, pinned=None, trust_log_key_alone=True) == ALARM_EXIT
    err = capsys.readouterr().err
    assert "ALARM: rollback" in err
    assert f"below the last verified size {size}" in err
    assert await monitor_remote(api, state, pinned=None, trust_log_key_alone=True) == ALARM_EXIT
    assert "not trusted" in capsys.readouterr().err
    assert len(json.loads(state.read_text())["evidence"]) == 2

    # Regrown to the same size with other events: two signed roots for one size (B-49).
    sealed.record(events(size - 2500 - sealed.pending(), 10_000, tag="other"))
    sealed.sequence()
    assert sealed.size() == size
    state.write_text(saved)
    assert await monitor_remote(api, state, pinned=None, trust_log_key_alone=True) == ALARM_EXIT
    assert "split view" in capsys.readouterr().err
    evidence = [parse_signed_tree_head(json.dumps(h).encode()) for h in _evidence(state)]
    assert [h.head.tree_size for h in evidence] == [size, size]
    assert evidence[0].head.root_hash != evidence[1].head.root_hash  # both signed: proof

    # Regrown past it: the log's consistency proof cannot bridge the two (a fork).
    sealed.record(events(400, 20_000, tag="fork"))
    sealed.sequence()
    state.write_text(saved)
    assert await monitor_remote(api, state, pinned=None, trust_log_key_alone=True) == ALARM_EXIT
    assert "fork: the log at size" in capsys.readouterr().err
    assert [h["head"]["tree_size"] for h in _evidence(state)] == [size, sealed.size()]


async def test_remote_monitor_requires_witnesses_unless_told_to_trust_the_log_key_alone(
    sealed: Sealed, api: AuditApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "monitor.json"
    with pytest.raises(ConfigError, match="no witnesses to check the audit log against") as e:
        await monitor_remote(api, state, pinned=None)
    assert e.value.code == "witnesses_required"
    assert not state.exists()
    assert await monitor_remote(api, state, pinned=None, trust_log_key_alone=True) == 0
    assert "does not protect against whoever holds the log key" in capsys.readouterr().err


async def test_remote_monitor_alarms_on_a_head_signed_by_another_key(
    sealed: Sealed, api: AuditApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "monitor.json"
    assert (
        await monitor_remote(
            api, state, pinned=read_log_key(sealed.log_pub), trust_log_key_alone=True
        )
        == 0
    )
    other = tmp_path / "other.pub"
    other.write_text(b64e(SigningKey.generate().verify_key.public) + "\n")
    with pytest.raises(ConfigError, match="not the key pinned"):
        await monitor_remote(api, state, pinned=read_log_key(other), trust_log_key_alone=True)
    attack(sealed.settings.data_dir, resign_head(sealed.size(), 2600))
    assert await monitor_remote(api, state, pinned=None, trust_log_key_alone=True) == ALARM_EXIT
    err = capsys.readouterr().err
    assert "ALARM: the log's tree head: tree head is signed by an unknown key" in err
    assert len(_evidence(state)) == 2


def _evidence(state: Path) -> list[dict[str, Any]]:
    evidence: list[dict[str, Any]] = json.loads(state.read_text())["evidence"]
    return evidence


# ------------------------------------------------------------------------------ the CLI
def test_without_the_broker_audit_has_only_the_remote_commands() -> None:
    parser = argparse.ArgumentParser(prog="istmo")
    sub = parser.add_subparsers(dest="command")
    add_remote_audit_parsers(sub)
    args = parser.parse_args(
        ["audit", "verify", "--from-url", "http://h:1/", "--as", "a", "--sample", "4"]
    )
    assert (args.from_url, args.who, args.sample, args.log_key) == ("http://h:1", "a", 4, None)
    args = parser.parse_args(
        ["audit", "monitor", "--from-url", "http://h:1", "--as", "a", "--state", "s.json"]
    )
    assert args.state == Path("s.json")
    for argv in (["audit", "verify"], ["audit", "tail"], ["audit", "verify", "--from-url", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_the_remote_verifier_imports_nothing_of_the_broker() -> None:
    code = (
        "import sys\n"
        "for m in ('sqlalchemy', 'sqlmodel', 'fastapi', 'uvicorn', 'cedarpy', 'authlib',"
        " 'joserfc', 'broker'):\n"
        "    sys.modules[m] = None\n"
        "import clients.audit_verify, schemas.merkle_verify\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("remote") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def url_of(up: UpProcess) -> str:
    return f"http://127.0.0.1:{up.ports['api']}"


def remote(up: UpProcess, command: str, *args: str, who: str = "auditor") -> Any:
    extra = ("--as", who) if who else ()
    return run_cli("audit", command, "--from-url", url_of(up), *extra, *args, data_dir=up.data_dir)


def test_cli_verify_and_monitor_from_url(up: UpProcess, tmp_path: Path) -> None:
    pub = up.data_dir / "broker" / "log.pub"
    eventually_sync(pub.exists, what="the sequencer's log key", interval=0.2)
    # Without witnesses (this stack runs none) verify refuses, unless told to trust the
    # log key alone; then it warns (tests/e2e/test_audit_witness.py gives witnesses).
    refused = one_line_error(remote(up, "verify", "--log-key", str(pub)))
    assert "no witnesses to check the audit log against" in refused
    assert "--trust-log-key-alone" in refused
    r = eventually_sync(
        lambda: remote(up, "verify", "--log-key", str(pub), "--trust-log-key-alone"),
        until=lambda r: r.returncode == 0,
        what="a signed log",
        interval=0.2,
    )
    assert "verified " in r.stdout
    assert "WARNING: checked on the log key alone" in r.stderr
    assert ", pinned)" in r.stdout
    assert "proofs: 32 inclusion" in r.stdout
    assert "from the server itself" not in r.stderr
    print(r.stdout.splitlines()[0])  # the timing, over real HTTP
    state = tmp_path / "monitor.json"
    first = remote(
        up, "monitor", "--trust-log-key-alone", "--state", str(state), "--log-key", str(pub)
    )
    assert first.returncode == 0, first.stderr
    assert "pinned log key sig-" in first.stdout
    size = json.loads(state.read_text())["head"]["head"]["tree_size"]

    def grown() -> str:
        again = remote(up, "monitor", "--trust-log-key-alone", "--state", str(state))
        assert again.returncode == 0, again.stderr
        return again.stdout if f"consistent with size {size}" in again.stdout else ""

    # Its own queries are entries.
    eventually_sync(grown, what="the monitor to see the log grow", interval=0.2)
    unpinned = remote(up, "verify", "--trust-log-key-alone")
    assert unpinned.returncode == 0, unpinned.stderr
    assert "came from the server itself" in unpinned.stderr


def test_cli_errors_are_one_line(up: UpProcess, tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_text(b64e(SigningKey.generate().verify_key.public) + "\n")
    msg = one_line_error(remote(up, "verify", "--log-key", str(other), "--trust-log-key-alone"))
    assert "not the pinned" in msg
    assert "--from-url needs --as" in one_line_error(remote(up, "verify", who=""))
    assert "needs an auditor's keystore (scope audit:read)" in one_line_error(
        remote(up, "verify", "--trust-log-key-alone", who="gt-police")
    )
    local_as = run_cli("audit", "verify", "--as", "auditor", data_dir=up.data_dir)
    assert "--as is for --from-url" in one_line_error(local_as)
    dead = run_cli(
        "audit", "verify", "--from-url", "http://127.0.0.1:9", "--as", "auditor",
        "--trust-log-key-alone", data_dir=up.data_dir,
    )  # fmt: skip
    assert "did not answer" in one_line_error(dead)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not base64!\n")
    alone = "--trust-log-key-alone"
    assert "is not a log key" in one_line_error(
        remote(up, "verify", "--log-key", str(garbage), alone)
    )
    both = one_line_error(remote(up, "verify", alone, "--witness", "w=" + b64e(bytes(32))))
    assert "contradict each other" in both
    # The monitor, as verify: no witnesses and no opt-out, refused; nothing pinned.
    state = tmp_path / "monitor.json"
    msg = one_line_error(remote(up, "monitor", "--state", str(state)))
    assert "no witnesses to check the audit log against" in msg
    assert "--trust-log-key-alone" in msg or "$ISTMO_AUDIT_WITNESSES" in msg
    assert not state.exists()


def test_a_client_without_the_server_dependencies_verifies(up: UpProcess) -> None:
    code = (
        "import sys\n"
        "for m in ('sqlalchemy', 'sqlmodel', 'fastapi', 'uvicorn', 'cedarpy', 'authlib',"
        " 'joserfc'):\n"
        "    sys.modules[m] = None\n"
        "from clients.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["audit", "verify", "--from-url", url_of(up), "--as", "auditor", "--trust-log-key-alone"]
    r = subprocess.run(
        [sys.executable, "-c", code, *argv, "--data-dir", str(up.data_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "verified " in r.stdout


def test_the_auditor_never_sees_bulletin_content(up: UpProcess) -> None:
    d = up.data_dir
    body = d.parent / "canary.md"
    body.write_text(CANARY_BODY)
    pub = run_cli(
        "publish", "--as", "gt-police", "--topic", "drug-trafficking",
        "--classification", "RESTRICTED", "--tlp", "AMBER", "--rel-to", "SICA",
        "--title", CANARY_TITLE, "--body-file", str(body), data_dir=d,
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr
    bid = pub.stdout.strip()
    got = run_cli("receive", "--as", "rc-drugs", "--count", "1", "--timeout", "10", data_dir=d)
    assert got.returncode == 0, got.stderr
    assert CANARY_TITLE in got.stdout  # the recipient reads it; the auditor must not

    texts: list[str] = []

    async def read_everything() -> bool:
        keystore = load_keystore(d / "keys" / "auditor.json")
        async with IstmoHttp(url_of(up), keystore, scope="audit:read") as http:
            found = await http.get("/v1/audit/search", bulletin=bid, limit=1000)
            types = {e["entry"]["type"] for e in found["entries"]}
            if "bulletin.received" not in types:
                return False  # not sequenced yet
            texts.append(json.dumps(found))
            after = -1
            while after is not None:
                page = await http.get("/v1/audit/entries", after_index=after, limit=1000)
                texts.append(json.dumps(page))
                after = page["next_after_index"]
            texts.append(json.dumps(await http.get("/v1/audit/tree-heads", limit=1000)))
            latest = await http.request("GET", "/v1/audit/tree-heads/latest")
            texts.append(latest.text)
            return True

    eventually_sync(
        lambda: asyncio.run(read_everything()),
        what="the bulletin's entries in the log",
        interval=0.2,
    )
    leaves = [
        base64.b64decode(e["leaf"]).decode()
        for t in texts
        if t.startswith('{"entries"')
        for e in json.loads(t)["entries"]
    ]
    assert any(bid in leaf for leaf in leaves)  # the bulletin is there, as metadata
    for text in [*texts, *leaves]:
        assert CANARY_TITLE not in text
        assert CANARY_BODY not in text
        assert "informant" not in text


# These two change the live database: keep them last.
def test_cli_verify_names_the_first_bad_index_after_an_edit(up: UpProcess) -> None:
    assert remote(up, "verify", "--trust-log-key-alone").returncode == 0
    attack(up.data_dir, lambda c: rewrite_entry(c, 100, outbox=False, log=True))
    msg = one_line_error(remote(up, "verify", "--trust-log-key-alone"))
    assert "audit log altered: first bad index 100: entry 100 is not the entry" in msg


def test_cli_monitor_alarms_on_rollback(up: UpProcess, tmp_path: Path) -> None:
    state = tmp_path / "monitor.json"
    assert remote(up, "monitor", "--trust-log-key-alone", "--state", str(state)).returncode == 0
    saved = json.loads(state.read_text())["head"]["head"]["tree_size"]
    with sqlite3.connect(up.data_dir / "istmo.db", timeout=60) as conn:
        (first,) = conn.execute("SELECT MIN(tree_size) FROM tree_head").fetchone()
    assert first < saved - 20
    attack(up.data_dir, truncate_to(first))
    r = remote(up, "monitor", "--trust-log-key-alone", "--state", str(state))
    assert r.returncode == ALARM_EXIT, (r.stdout, r.stderr)
    assert "ALARM: rollback" in r.stderr
    assert f"below the last verified size {saved}" in r.stderr
    again = remote(up, "monitor", "--trust-log-key-alone", "--state", str(state))
    assert again.returncode == ALARM_EXIT
    assert "not trusted" in again.stderr
