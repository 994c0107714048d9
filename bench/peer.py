"""10. A peer, side by side: the OASIS TAXII 2.1 reference server ``medallion``.

medallion is installed from PyPI into its own throwaway virtual environment
(``/tmp/istmo-bench-medallion``, made with ``python -m venv`` + ``pip install medallion``
on first use and reused afterwards while medallion imports in it; nothing of it enters
the project or its venv), and started on 127.0.0.1 on a free port with its memory
backend and a generated config: one user, one API root, one read/write collection.
Istmo's relay starts while medallion does; neither is measured until both are up.

Both systems then get the same job, one object per request, with a reader polling or
pulling at the same time:
  * medallion: POST 2,000 STIX 2.1 indicators of ~2 KiB (one per request, HTTP basic
    auth, keep-alive), while a poller GETs the collection's objects with ``added_after``
    (the last ``X-TAXII-Date-Added-Last`` it saw) in a loop;
  * Istmo: ``publish()`` 2,000 bulletins with a 2 KiB body to 1 recipient (TLP RED,
    named bz-police), one after the other, while bz-police's SDK receives.
Objects per second = objects added / time to add them (at most ``ADD_CAP_S`` per
system, 30 s: medallion's adds slow down as its list grows, so it stops short of 2,000 on
a 2-core machine; the report says how many); time-to-visibility = from the add request
returning to the reader first seeing the object (p50/p90/p99/max).
Quick mode: 60 objects each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import httpx

from bench.context import Context
from bench.harness import BODY, Proc, empty_queue, peak_rss_mib, stop_receiver
from bench.stats import latency_summary
from bench.timing import phase
from broker.bus.server import free_port
from clients.sdk import ReceivedBulletin
from schemas.labels import Classification, Labels, Tlp

NAME = "peer"
REUSES_RELAY = True  # the relay item 7 left running (one is started if none runs)
TITLE = "10. A peer: TAXII 2.1 medallion vs Istmo"
VENV = Path("/tmp/istmo-bench-medallion")  # noqa: S108 -- the throwaway venv, by design
TAXII = "application/taxii+json;version=2.1"
STIX = "application/stix+json;version=2.1"
ADD_CAP_S = 30.0  # per system: adding stops here; the report says how many were added
ONE_RECIPIENT = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.RED,
    rel_to=("BZ",),
    named=("bz-police",),
)


def _medallion_version() -> str | None:
    """medallion's version in the throwaway venv, or None if it is not (or no longer)
    usable there: no venv, a venv whose Python is gone, a broken install."""
    if not (VENV / "bin" / "medallion").exists():
        return None
    try:
        done = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", "import medallion; print(medallion.__version__)"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def ensure_medallion() -> dict[str, object]:
    """The throwaway venv with medallion; made once (pip from PyPI), then reused as long
    as medallion imports in it."""
    t = time.perf_counter()
    made = False
    version = _medallion_version()
    if version is None:
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "medallion"],
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )
        made = True
        version = _medallion_version()
        if version is None:
            raise RuntimeError(f"medallion does not import in {VENV} after installing it")
    return {
        "medallion": version,
        "installed_now": made,
        "install_s": round(time.perf_counter() - t, 1),
    }


def write_config(root: Path, port: int, password: str) -> tuple[Path, str]:
    collection = str(uuid.UUID(int=0x15_7A0, version=4))
    base = f"http://127.0.0.1:{port}"
    data = {
        "/discovery": {
            "title": "Istmo benchmark TAXII server",
            "description": "medallion, memory backend, for a side-by-side benchmark",
            "contact": "nobody@example.invalid",
            "default": f"{base}/bench/",
            "api_roots": [f"{base}/bench/"],
        },
        "bench": {
            "information": {
                "title": "bench",
                "description": "one API root",
                "versions": [TAXII],
                "max_content_length": 10_485_760,
            },
            "status": [],
            "collections": [
                {
                    "id": collection,
                    "title": "indicators",
                    "description": "read and write",
                    "can_read": True,
                    "can_write": True,
                    "media_types": [STIX],
                    "objects": [],
                    "manifest": [],
                }
            ],
        },
    }
    (root / "data.json").write_text(json.dumps(data))
    config = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(root / "data.json"),
        },
        "users": {"bench": password},
        "taxii": {"max_page_size": 1000},
    }
    path = root / "medallion.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path, collection


def indicator(i: int) -> dict[str, object]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    obj: dict[str, object] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": now,
        "modified": now,
        "name": f"go-fast boat {i}",
        "pattern": "[ipv4-addr:value = '198.51.100.7']",
        "pattern_type": "stix",
        "valid_from": now,
        "description": "",
    }
    pad = 2048 - len(json.dumps(obj))
    obj["description"] = "x" * max(0, pad)  # ~2 KiB, like the bulletin bodies
    return obj


async def medallion_side(
    ctx: Context, objects: int, ready: Awaitable[object] | None = None
) -> dict[str, object]:
    """medallion's figures; ``ready`` (Istmo's relay starting) is awaited once the server
    answers, before the clock starts, so the two start-ups overlap but no measurement."""
    root = ctx.tmp / "medallion"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    password = uuid.uuid4().hex
    config, collection = write_config(root, port, password)
    proc = Proc(
        "medallion",
        [str(VENV / "bin" / "medallion"), "--host", "127.0.0.1", "--port", str(port), str(config)],
        root / "medallion.log",
    ).start()
    url = f"http://127.0.0.1:{port}/bench/collections/{collection}/objects/"
    headers = {"Accept": TAXII, "Content-Type": TAXII}
    auth = httpx.BasicAuth("bench", password)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(auth=auth, headers=headers, timeout=30) as http:
            for _ in range(200):  # wait until it answers
                try:
                    if (await http.get(url)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            if ready is not None:
                await ready
            stop = asyncio.Event()

            poll_errors = 0

            async def poller() -> int:
                nonlocal poll_errors
                polls = 0
                after: str | None = None
                async with httpx.AsyncClient(auth=auth, headers=headers, timeout=60) as p:
                    while not stop.is_set():
                        params = {"added_after": after} if after else {}
                        try:
                            r = await p.get(url, params=params)
                        except httpx.HTTPError:
                            poll_errors += 1  # counted; a slow poll is part of the figure
                            continue
                        polls += 1
                        now = time.perf_counter()
                        if r.status_code == 200:
                            for o in r.json().get("objects", []):
                                seen.setdefault(o["id"], now)
                            after = r.headers.get("X-TAXII-Date-Added-Last") or after
                        await asyncio.sleep(0.01)
                return polls

            reader = asyncio.create_task(poller())
            t0 = time.perf_counter()
            failed = 0
            cap = time.monotonic() + ADD_CAP_S
            for i in range(objects):
                if time.monotonic() > cap:
                    break  # bounded: the figures say how many were added
                obj = indicator(i)
                try:
                    r = await http.post(url, content=json.dumps({"objects": [obj]}))
                except httpx.HTTPError:
                    failed += 1
                    continue
                if r.status_code != 202:
                    failed += 1
                    continue
                sent[str(obj["id"])] = time.perf_counter()
            add_s = time.perf_counter() - t0
            deadline = time.monotonic() + float(ctx.pick(10, 20))
            while time.monotonic() < deadline and not set(sent) <= set(seen):
                await asyncio.sleep(0.02)
            stop.set()
            polls = await reader
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.kill()  # done and measured (and its session-checker thread outlives Ctrl-C)
        proc.wait_stopped()
    vis = [max(0.0, seen[k] - t) for k, t in sent.items() if k in seen]
    return {
        "objects": objects,
        "added": len(sent),
        "failed": failed,
        "add_seconds": round(add_s, 2),
        "objects_per_s": round(len(sent) / add_s, 1),
        "visible": len(vis),
        "polls": polls,
        "poll_errors": poll_errors,
        "time_to_visibility": latency_summary(vis),
        "server_peak_rss_mib": rss,
    }


async def istmo_side(ctx: Context, objects: int) -> dict[str, object]:
    stack = ctx.demo_stack()
    stack.ensure_relays(1)  # started beside medallion by ``run``
    sent: dict[str, float] = {}
    got: dict[str, float] = {}

    async def app(b: ReceivedBulletin) -> None:
        got.setdefault(b.id, time.perf_counter())

    try:
        async with await stack.client("gt-police") as gt, await stack.client("bz-police") as bz:
            for _ in range(50):  # the relay answers resolve once it has subscribed
                with contextlib.suppress(Exception):
                    recipients = await gt.resolve(ONE_RECIPIENT)
                    break
                await asyncio.sleep(0.2)
            await empty_queue(stack, bz)  # what earlier measurements left for it
            receiver = asyncio.create_task(bz.receive(app, timeout=objects / 5 + 60, batch=16))
            t0 = time.perf_counter()
            failed = 0
            cap = time.monotonic() + ADD_CAP_S
            for i in range(objects):
                if time.monotonic() > cap:
                    break  # bounded: the figures say how many were added
                try:
                    r = await gt.publish(title=f"p{i}", text=BODY, labels=ONE_RECIPIENT, wait=False)
                except Exception:
                    failed += 1
                    continue
                sent[r.bulletin_id] = time.perf_counter()
            add_s = time.perf_counter() - t0
            deadline = time.monotonic() + float(ctx.pick(20, 60))
            while time.monotonic() < deadline and not set(sent) <= set(got):
                await asyncio.sleep(0.02)
            await stop_receiver(receiver)
        stack.sample_peaks()
    finally:
        stack.stop_workers()
    vis = [max(0.0, got[k] - t) for k, t in sent.items() if k in got]
    return {
        "objects": objects,
        "recipients_resolved": sorted(recipients),
        "added": len(sent),
        "failed": failed,
        "add_seconds": round(add_s, 2),
        "objects_per_s": round(len(sent) / add_s, 1),
        "visible": len(vis),
        "time_to_visibility": latency_summary(vis),
    }


async def run(ctx: Context) -> dict[str, object]:
    objects = int(ctx.pick(60, 2000))
    with phase("medallion venv"):
        setup = await asyncio.to_thread(ensure_medallion)
    stack = ctx.demo_stack()
    relay = asyncio.create_task(asyncio.to_thread(stack.ensure_relays, 1))
    try:
        with phase("medallion side"):
            med = await medallion_side(ctx, objects, relay)
    except BaseException:
        await relay
        stack.stop_workers()
        raise
    print(f"  medallion: {med}", flush=True)
    with phase("istmo side"):
        ist = await istmo_side(ctx, objects)
    print(f"  istmo: {ist}", flush=True)
    ctx.note("medallion server", med.get("server_peak_rss_mib"))  # type: ignore[arg-type]
    ctx.note_self()
    return {"setup": setup, "medallion": med, "istmo": ist}
