"""Two Istmo regions on one machine, linked by a partner link (ADR 32, ADR 33): what the
live link's tests share (``test_partner_link_live.py``, and F-28 in
``tests/faults/test_partner_link_cut.py``).

``linked_regions`` runs region A and region B (nats-server, relay, SQLite each, in the
test's loop), adds the partner region ``EU-SIENA`` and its gateway agency ``eu-gateway``
on both sides with the administrators' tools, enrols the gateway's keys in A (and, for a
test that reads in B what crossed, the same keys in B with ``istmo enroll
--same-keys-as``, and an agency of A only, ``A_ONLY``), writes the link's file on both
sides and reads the keys B pins from A's operator commands, as docs/borders.md walks an
operator through. The guard (``istmo federation guard``) and
the ingest (``istmo federation ingest``) are real processes the tests start with
``process``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from broker.bus.connect import connect_as_broker
from broker.config import Settings
from broker.relay.guard import Link
from broker.runtime.stack import Stack
from broker.store.registry import Registry
from schemas.federation import day_of
from schemas.labels import Classification, Handling, Labels, Tlp
from schemas.subjects import DELIVER_STREAM
from tests.integration.stack_inproc import nats_url, running_stack
from tests.stackproc import ISTMO as ISTMO_SCRIPT
from tests.stackproc import free_port, interrupt, run_cli

__all__ = [
    "A_ONLY",
    "GATEWAY",
    "LINK",
    "PUBLISHER",
    "RED",
    "RELEASABLE",
    "Regions",
    "bulletins",
    "events",
    "held_by_b",
    "istmo_cli",
    "linked_regions",
    "listening",
    "process",
    "reconcile",
    "seed",
]

GATEWAY, PUBLISHER = "eu-gateway", "gt-police"
# An agency of region A only (the demo directory seeds gt-police in both regions, and a
# gateway never takes a partner's record for an agency of its own region).
A_ONLY = "gt-antidrogas"
LINK = Link(
    name="eu-siena",
    code="EU-SIENA",
    agencies=(GATEWAY,),
    ceiling=Classification.RESTRICTED,
    topics=("drug-trafficking",),
    tlps=(Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER),
    handling=(Handling.H0,),
)
RELEASABLE = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.GREEN,
    rel_to=("GT", "EU-SIENA"),
    handling=(Handling.H0,),
)
RED = RELEASABLE.model_copy(update={"tlp": Tlp.RED, "named": (GATEWAY,)})
ISTMO = [sys.executable, "-m", "clients.cli"]


@dataclass(frozen=True)
class Regions:
    """Two linked regions: their data directories and stacks, the keys B pins (as A's
    operator printed them), and the arguments of the link's two processes."""

    a_dir: Path
    b_dir: Path
    a: Stack
    b: Stack
    link_key: str  # A's link key, as `istmo federation key --link` prints it
    directory_key: str  # A's directory key, as `istmo federation key --directory` prints it
    partner: str  # B's ingest, http://127.0.0.1:PORT
    ingest: list[str]
    guard: list[str]

    @property
    def dirs(self) -> dict[str, Path]:
        return {"a": self.a_dir, "b": self.b_dir}


@asynccontextmanager
async def linked_regions(tmp_path: Path, *, reading: bool = False) -> AsyncIterator[Regions]:
    """Regions A and B, linked; with ``reading``, ``A_ONLY`` enrolled in A
    (``tmp_path/a-only.json``) and the gateway in B too (``tmp_path/gateway-b.json``), so
    that a test can read in B what crossed (a few seconds more)."""
    dirs = {"a": tmp_path / "region-a", "b": tmp_path / "region-b"}
    async with running_stack(dirs["a"]) as a, running_stack(dirs["b"]) as b:

        async def region_a() -> None:
            await add_partner(dirs["a"], tmp_path, enrol=True)
            if reading:
                await add_publisher(dirs["a"], tmp_path)

        _, b_grant = await asyncio.gather(region_a(), add_partner(dirs["b"], tmp_path, enrol=False))
        if reading:
            # The gateway enrols in its own region too, with the same keys (so it opens
            # there what region A sealed for it): tmp_path/gateway-b.json.
            same = ["--same-keys-as", str(tmp_path / "gateway.json")]
            await _enrol(b_grant, tmp_path / "gateway-b.json", same)
        for d in dirs.values():
            (d / "federation").mkdir()
            (d / "federation" / f"{LINK.name}.json").write_text(LINK.model_dump_json())
        link_line = await istmo_cli("federation", "key", "--link", LINK.name, data_dir=dirs["a"])
        directory_line = await istmo_cli("federation", "key", "--directory", data_dir=dirs["a"])
        assert directory_line.startswith("directory sig-")
        port = free_port()
        partner = f"http://127.0.0.1:{port}"
        ingest = ["federation", "ingest", "--data-dir", str(dirs["b"]), "--link", LINK.name,
                  "--listen", f"127.0.0.1:{port}", "--sender-key", link_line.strip(),
                  "--directory-key", directory_line.strip()]  # fmt: skip
        guard = ["federation", "guard", "--data-dir", str(dirs["a"]), "--link", LINK.name,
                 "--partner", partner]  # fmt: skip
        yield Regions(
            dirs["a"], dirs["b"], a, b, link_line.strip(), directory_line.strip(), partner,
            ingest, guard,
        )  # fmt: skip


def events(data_dir: Path, type_: str) -> list[str]:
    """The data of a region's audit events of ``type_``."""
    registry = Registry(Settings.from_env(env={}, data_dir=data_dir).db_url)
    try:
        return [e.data for e in registry.audit_events(type_=type_, limit=100_000)]
    finally:
        registry.close()


def bulletins(data_dir: Path, type_: str) -> list[str | None]:
    """The bulletin ids of a region's audit events of ``type_``."""
    registry = Registry(Settings.from_env(env={}, data_dir=data_dir).db_url)
    try:
        return [e.bulletin_id for e in registry.audit_events(type_=type_, limit=100_000)]
    finally:
        registry.close()


@contextmanager
def process(
    args: list[str], log: Path, *, prefix: Sequence[str] = ()
) -> Iterator[subprocess.Popen[str]]:
    """``istmo ARGS`` as a process of its own (run by ``prefix``: ``ip netns exec NS``),
    its errors appended to ``log``; Ctrl-C'd at the end if it still runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("a") as err:
        proc = subprocess.Popen(  # our own CLI, arguments from the test
            [*prefix, *ISTMO, *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            interrupt(proc)
        if proc.stdout is not None:
            proc.stdout.close()


async def listening(partner: str, proc: subprocess.Popen[str]) -> bool:
    """True once the ingest at ``partner`` answers (or once ``proc`` died: the caller's
    next check says why)."""
    try:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{partner}/v1/federation/other/transfers")
            return r.status_code == 404
    except httpx.HTTPError:
        return proc.poll() is not None


def seed(stack: Stack) -> str:
    return (stack.settings.broker_dir / "relay.seed").read_text().strip()


async def held_by_b(stack: Stack) -> int:
    """How many deliveries to the gateway B's delivery stream holds."""
    nc = await connect_as_broker(nats_url(stack), seed=seed(stack), name="test", reconnects=0)
    try:
        info = await nc.jetstream().stream_info(
            DELIVER_STREAM, subjects_filter=f"istmo.deliver.{GATEWAY}.>"
        )
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def istmo_cli(*args: str, data_dir: Path) -> str:
    """`istmo ARGS --data-dir DATA_DIR` as an operator runs it (the stacks keep running
    in this loop meanwhile); its output."""
    done = await asyncio.to_thread(run_cli, *args, data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def add_partner(data_dir: Path, tmp_path: Path, *, enrol: bool) -> dict[str, str]:
    """The partner region and its gateway agency in one region's directory; with
    ``enrol``, the gateway enrols its keys there (its keystore ``tmp_path/gateway.json``).
    Its enrolment grant."""
    await istmo_cli("admin", "jurisdiction", "add", "EU-SIENA", "--name", "Europol SIENA",
                    data_dir=data_dir)  # fmt: skip
    out = await istmo_cli("admin", "agency", "add", GATEWAY, "--name", "SIENA gateway",
                          "--state", "EU-SIENA", "--sector", "police", "--clearance",
                          "RESTRICTED", "--topic", "drug-trafficking", "--json",
                          data_dir=data_dir)  # fmt: skip
    grant: dict[str, str] = json.loads(out)
    if enrol:
        await _enrol(grant, tmp_path / "gateway.json", [])
    return grant


async def add_publisher(data_dir: Path, tmp_path: Path) -> None:
    """``A_ONLY`` in region A, enrolled: its keystore ``tmp_path/a-only.json``."""
    out = await istmo_cli("admin", "agency", "add", A_ONLY, "--name", "GT anti-drugs",
                          "--state", "GT", "--sector", "police", "--clearance", "RESTRICTED",
                          "--topic", "drug-trafficking", "--json", data_dir=data_dir)  # fmt: skip
    await _enrol(json.loads(out), tmp_path / "a-only.json", [])


async def _enrol(grant: dict[str, str], out: Path, more: list[str]) -> None:
    enrolled = await asyncio.to_thread(
        subprocess.run,
        [ISTMO_SCRIPT, "enroll", "--broker", grant["broker"], "--token", grant["token"],
         "--directory-kid", grant["directory_kid"], "--out", str(out), "--no-passphrase",
         *more],
        capture_output=True, text=True, cwd=out.parent, timeout=60, check=False,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr


async def reconcile(regions: Regions, tmp_path: Path) -> str:
    """Each side's signed counts of the first day anything passed, reconciled with the
    commands an operator runs: what `istmo federation reconcile` printed (it must pass)."""
    passed = events(regions.a_dir, "federation.passed")
    day = day_of(min(json.loads(e)["created_at"] for e in passed))
    files = {}
    for side, data_dir in (("sent", regions.a_dir), ("received", regions.b_dir)):
        files[side] = tmp_path / f"{side}.json"
        await istmo_cli("federation", "counts", "--link", LINK.name, "--day", day, "--side",
                        side, "--out", str(files[side]), data_dir=data_dir)  # fmt: skip
    received_key = await istmo_cli("federation", "key", "--link", LINK.name,
                                   data_dir=regions.b_dir)  # fmt: skip
    return await istmo_cli("federation", "reconcile", "--sent", str(files["sent"]),
                           "--sent-key", regions.link_key, "--received",
                           str(files["received"]), "--received-key",
                           received_key.strip().splitlines()[-1],
                           data_dir=regions.a_dir)  # fmt: skip
