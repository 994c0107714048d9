"""12. The agency's TAXII 2.1 server over its encrypted archive (ADR 23).

An archive of N bulletins on one topic (100,000; quick 2,000) with a ~1 KiB body each,
sealed as ``istmo inbox sync`` seals them, is loaded (fsync off while loading: the load
is not what is measured). Then:
  * full-text search: how long the first search takes (it builds the in-memory index from
    every row, decrypting each), the index's memory, and a search once built;
  * ``istmo taxii serve`` (a real subprocess, uvicorn) is read by one keep-alive client:
    the whole collection paged with ``limit=100`` and ``next``, each page timed; then the
    deepest page (the last 100 objects) 20 times.
objects/s = objects served / time to page through all of them. Medallion's figure is the
objects/s of the newest full result of item 10 (its adds, one per request, memory
backend): the ratio says how far apart they are, not that they did the same job.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.context import Context
from bench.stats import latency_summary
from bench.timing import phase
from broker.bus.server import free_port
from clients.archive import Archive, ArchiveFilter
from clients.archive_keys import ArchiveSecret
from clients.keystore import save_keystore
from clients.results import ReceivedBulletin
from clients.stix import collection_id
from schemas.keys import SigningKey
from schemas.keystore import new_keystore
from schemas.labels import Classification, Labels, Tlp
from schemas.natskeys import new_user_seed

NAME = "taxii"
TITLE = "12. The agency's TAXII 2.1 server over its encrypted archive"
TIMES_NOTHING = False
TAXII = "application/taxii+json;version=2.1"
WORDS = "boat cocaine bales harbour north east vessel crew radar sighting coast".split()
RESULTS = Path(__file__).resolve().parent / "results"
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)


def _bulletin(n: int) -> ReceivedBulletin:
    body = " ".join(f"{WORDS[(n * 7 + i) % len(WORDS)]}{i % 50}" for i in range(150))
    return ReceivedBulletin(
        id=f"9c0d2b1a-0000-4000-8000-{n:012d}",
        originator="gt-police",
        labels=LABELS,
        title=f"Go-fast boat sighting {n}",
        body=f"unique{n} {body}"[:1024],
        created_at=1_780_000_000 + n,
        received_at=1_780_000_100 + n,
        caveats=(),
    )


def _medallion_objects_per_s(ctx: Context) -> float | None:
    found = {*ctx.results_dir.glob("20*.json"), *RESULTS.glob("20*.json")}
    for path in sorted(found, key=lambda p: p.name, reverse=True):
        if path.stem.endswith("quick"):
            continue
        try:
            peer = json.loads(path.read_text())["results"]["peer"]["medallion"]
            return float(peer["objects_per_s"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def run(ctx: Context) -> dict[str, object]:
    n = int(ctx.pick(2_000, 100_000))
    d = ctx.tmp / "taxii"
    d.mkdir(parents=True, exist_ok=True)
    ks, _, _ = new_keystore(
        agency="sv-police",
        nats_seed=new_user_seed(),
        directory_key=SigningKey.generate().verify_key,
        now=int(time.time()),
    )
    save_keystore(d / "sv-police.json", ks)
    key = d / "archive.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    secret = ArchiveSecret("key-file", key.read_bytes())
    token = os.urandom(24).hex()
    (d / "token").write_text(token + "\n")
    (d / "token").chmod(0o600)
    path = d / "sv-police.archive.sqlite"

    with phase("load"), Archive.open(path, "sv-police", lambda: secret) as archive:
        archive._db.execute("PRAGMA synchronous = OFF")  # loading is not what is measured
        t = time.perf_counter()
        for i in range(1, n + 1):
            archive.add(_bulletin(i))
        load_s = time.perf_counter() - t
    size_mib = sum(f.stat().st_size for f in d.glob("sv-police.archive.sqlite*")) / 2**20

    with phase("search"), Archive.open(path, "sv-police", lambda: secret) as archive:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        first = archive.search(f"unique{n // 2}", ArchiveFilter(), limit=10)
        build_s = time.perf_counter() - t
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert [e.id for e in first] == [_bulletin(n // 2).id]
        searches = []
        for i in range(50):
            t = time.perf_counter()
            archive.search(f"boat{i % 50} coast{(i + 3) % 50}", ArchiveFilter(), limit=50)
            searches.append((time.perf_counter() - t) * 1000)

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "istmo"), "taxii", "serve", "--as",
         str(d / "sv-police.json"), "--port", str(port), "--archive-key-file", str(key),
         "--token-file", str(d / "token")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"istmo taxii serve did not start: {proc.stderr}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/istmo/collections/{collection_id('drug-trafficking')}"
        headers = {"Accept": TAXII, "Authorization": f"Bearer {token}"}
        pages: list[float] = []
        served = 0
        with phase("page"), httpx.Client(headers=headers, timeout=60) as http:
            params: dict[str, str] = {"limit": "100"}
            t0 = time.perf_counter()
            while True:
                t = time.perf_counter()
                r = http.get(f"{url}/objects/", params=params)
                pages.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                body = r.json()
                served += len(body.get("objects", ()))
                if not body["more"]:
                    break
                params = {"limit": "100", "next": body["next"]}
            page_s = time.perf_counter() - t0
            deep: list[float] = []
            for _ in range(20):
                t = time.perf_counter()
                r = http.get(f"{url}/objects/", params={"limit": "100", "next": str(n - 100)})
                deep.append((time.perf_counter() - t) * 1000)
                assert len(r.json()["objects"]) == 100
    finally:
        proc.terminate()
        proc.wait(30)
    assert served == n, (served, n)
    objects_per_s = round(served / page_s, 1)
    medallion = _medallion_objects_per_s(ctx)
    deep_summary = latency_summary([x / 1000 for x in deep])
    row = {
        "objects": n,
        "page_ms": deep_summary["p50_ms"],
        "objects_per_s": objects_per_s,
    }
    return {
        "rows": [row],
        "archive": {"load_s": round(load_s, 1), "file_mib": round(size_mib, 1)},
        "search": {
            "first_search_builds_index_s": round(build_s, 2),
            "index_rss_growth_mib": round((rss1 - rss0) / 1024, 1),
            "search_ms": latency_summary([x / 1000 for x in searches]),
        },
        "pages": {"count": len(pages), **latency_summary([x / 1000 for x in pages])},
        "deepest_page": deep_summary,
        "medallion_objects_per_s": medallion,
        "times_medallion": None if not medallion else round(objects_per_s / medallion, 1),
        "targets": {
            "times_medallion_at_least": 100,
            "page_ms_at_most": 50,
        },
    }
