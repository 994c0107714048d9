"""Figures for the bulletin path on this machine, run on demand (never by the tests).

    .venv/bin/python -m bench.bulletin_path [--bulletins 500] [--rate 20] [--seconds 10]

Measures, against a real embedded stack (nats-server with sync_interval always, SQLite
with synchronous=FULL, relay and SDK in one process):
  1. seal and open cost per bulletin for 1, 5, 20, 60 recipients, both KEMs;
  2. relay throughput: bulletins accepted per second with a backlog of N bulletins to
     3 recipients each (deliveries = 3 N);
  3. publish -> application latency (p50/p90/p99/max) at a fixed offered load;
  4. peak RSS of the process.
Prints a table and writes bench/results/bulletin_path.json. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import sys
import tempfile
import time
import timeit
from pathlib import Path

from sqlmodel import func, select

from broker.registry import BulletinRow
from clients.sdk import ReceivedBulletin
from schemas.envelope import Content
from schemas.keys import EncryptionKey, SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import encode_envelope, open_envelope, parse_envelope, seal
from tests.integration.stack_inproc import client, running_stack

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)
BODY = "x" * 2048  # 2 KiB bodies


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def crypto_costs() -> list[dict[str, object]]:
    rows = []
    sk = SigningKey.generate()
    for kem in ("MLKEM768-X25519", "X25519"):
        for n in (1, 5, 20, 60):
            keys = {f"ag-{i:03d}": EncryptionKey.generate(kem) for i in range(n)}  # type: ignore[arg-type]
            pubs = {k: v.public_key for k, v in keys.items()}

            def do_seal(pubs: dict = pubs) -> bytes:  # type: ignore[type-arg]
                return encode_envelope(
                    seal(
                        content=Content(title="t", text=BODY),
                        labels=LABELS,
                        originator="gt-police",  # type: ignore[arg-type]
                        signing_key=sk,
                        recipients=pubs,
                        now=1_800_000_000,
                    )  # type: ignore[arg-type]
                )

            raw = do_seal()
            first = next(iter(keys))

            def do_open(raw: bytes = raw, first: str = first, keys: dict = keys) -> None:  # type: ignore[type-arg]
                env = parse_envelope(raw)
                open_envelope(env, recipient=first, key=keys[first], sender_key=sk.verify_key)  # type: ignore[arg-type]

            reps = max(5, 200 // n)
            seal_ms = min(timeit.repeat(do_seal, number=reps, repeat=3)) / reps * 1e3
            open_ms = min(timeit.repeat(do_open, number=50, repeat=3)) / 50 * 1e3
            rows.append(
                {
                    "kem": kem,
                    "recipients": n,
                    "seal_ms": round(seal_ms, 3),
                    "open_ms": round(open_ms, 3),
                    "envelope_bytes": len(raw),
                }
            )
    return rows


async def path_figures(n: int, rate: float, seconds: float) -> dict[str, object]:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with running_stack(Path(tmp) / "istmo") as stack:
            assert stack.registry is not None

            def stored() -> int:
                with stack.registry.session() as s:  # type: ignore[union-attr]
                    return int(s.exec(select(func.count()).select_from(BulletinRow)).one())

            async with await client(stack, "gt-police") as gt:
                keys = await gt.resolve(LABELS)
                envs = [
                    seal(
                        content=Content(title=f"b{i}", text=BODY),
                        labels=LABELS,
                        originator=gt.agency,
                        signing_key=gt.keystore.signing_key(),
                        recipients=keys,
                        now=int(time.time()),
                    )
                    for i in range(n)
                ]
                t0 = time.perf_counter()
                for start in range(0, n, 100):
                    await asyncio.gather(
                        *(gt._publish_envelope(e) for e in envs[start : start + 100])
                    )
                t_pub = time.perf_counter() - t0
                deadline = time.monotonic() + 300
                while stored() < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                t_all = time.perf_counter() - t0
                out["backlog_bulletins"] = n
                out["recipients_each"] = len(keys)
                out["ingest_publish_per_s"] = round(n / t_pub, 1)
                out["relay_accepted_per_s"] = round(n / t_all, 1)

            # Drain the backlog so the latency run starts clean.
            async def ignore(_b: ReceivedBulletin) -> None:
                return None

            for agency in sorted(keys):
                async with await client(stack, agency) as rc:
                    await rc.receive(ignore, count=n, timeout=120, batch=100)

            # Latency at a fixed offered load: publish() returning -> app receives.
            sent: dict[str, float] = {}
            lat: list[float] = []

            async def app(b: ReceivedBulletin) -> None:
                lat.append(time.perf_counter() - sent[b.id])

            total = int(rate * seconds)
            async with (
                await client(stack, "gt-police") as gt,
                await client(stack, "bz-police") as bz,
            ):
                receiver = asyncio.create_task(
                    bz.receive(app, count=total, timeout=seconds + 60, batch=1)
                )
                for i in range(total):
                    tick = time.perf_counter()
                    r = await gt.publish(title=f"l{i}", text=BODY, labels=LABELS, wait=False)
                    sent[r.bulletin_id] = time.perf_counter()
                    await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - tick)))
                await receiver
            ms = [x * 1e3 for x in lat]
            out["latency"] = {
                "offered_per_s": rate,
                "bulletins": len(ms),
                "p50_ms": round(pct(ms, 50), 1),
                "p90_ms": round(pct(ms, 90), 1),
                "p99_ms": round(pct(ms, 99), 1),
                "max_ms": round(max(ms), 1),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bulletins", type=int, default=500)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    result: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    result["crypto"] = crypto_costs()
    result.update(asyncio.run(path_figures(args.bulletins, args.rate, args.seconds)))
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("seal/open per bulletin (2 KiB body):")
    for r in result["crypto"]:  # type: ignore[attr-defined]
        print(
            f"  {r['kem']:<16} {r['recipients']:>3} recipients  seal {r['seal_ms']:>7.2f} ms"
            f"  open {r['open_ms']:>6.2f} ms  {r['envelope_bytes']:>7} B"
        )
    print(
        f"relay: {result['relay_accepted_per_s']} bulletins/s accepted from a backlog of "
        f"{result['backlog_bulletins']} ({result['recipients_each']} recipients each); "
        f"ingest publish {result['ingest_publish_per_s']}/s"
    )
    print(f"latency publish->app: {result['latency']}")
    print(f"peak RSS (SDK + relay + API + test harness, one process): {result['peak_rss_mib']} MiB")
    path = Path(__file__).parent / "results" / "bulletin_path.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
