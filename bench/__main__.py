"""Istmo's benchmarks: the cost of security and a peer, side by side, in one run.

    .venv/bin/python -m bench                 # everything (under 10 minutes on 2 cores)
    .venv/bin/python -m bench --quick         # smaller sizes (under 2 minutes)
    .venv/bin/python -m bench --only latency,policy
    .venv/bin/python -m bench --out /tmp/r.json --no-report

Writes the figures, with the environment they were taken in, to
``bench/results/<date>.json`` (``<date>-quick.json`` in quick mode), the plots to
``bench/results/img/`` and regenerates ``BENCHMARKS.md`` from them (its hand-written
sections are kept). Every server listens on 127.0.0.1 on free ports; every process and
temporary directory is removed at the end, also after a failure. A measurement that
fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import timing
from bench.context import Context

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# In running order: the demo stack's measurements before growth (which seeds it), the
# directory sizes after the demo stack's (their 3,500-agency stack stops while the memory
# summary runs), the memory summary last (it collects what every other one saw).
MODULES = (
    "sdk_cost",
    "policy_cost",
    "audit_log",
    "security_cost",
    "relay_throughput",
    "latency",
    "growth",
    "peer",
    "profile_relay",
    "receipts",
    "directory_size",
    "attachments",
    "taxii_serve",
    "broadcast",
    "memory",
)


def _names() -> dict[str, str]:
    """Measurement name (as ``--only`` takes it) -> module."""
    return {importlib.import_module(f"bench.{m}").NAME: m for m in MODULES}


def environment(quick: bool) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def out(*argv: str) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=10, check=False, cwd=ROOT
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    from broker.bus.server import find_nats_server

    nats_bin = str(find_nats_server(None))
    return {
        "mode": "quick" if quick else "full",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_mib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": out(nats_bin, "--version"),
        "nats_server_path": nats_bin,
        "git_commit": out("git", "rev-parse", "HEAD"),
        "git_dirty": bool(
            out("git", "status", "--porcelain", "--", "broker", "clients", "schemas")
        ),
    }


async def run_all(names: list[str], ctx: Context) -> dict[str, Any]:
    results: dict[str, Any] = {}
    modules = _names()
    for name in names:
        mod = importlib.import_module(f"bench.{modules[name]}")
        print(f"== {mod.TITLE}", flush=True)
        if not getattr(mod, "TIMES_NOTHING", False):
            ctx.wait_stopped()  # a stack still stopping would share the CPU
        if not getattr(mod, "REUSES_RELAY", False):
            ctx.stop_demo_workers()  # what the previous measurement left running
        timing.take(0)  # start afresh
        t = time.perf_counter()
        try:
            value = mod.run(ctx)
            if inspect.isawaitable(value):
                value = await value
            results[name] = value
        except Exception as exc:
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        seconds = time.perf_counter() - t
        results[name]["seconds"] = round(seconds, 1)
        results[name]["phases"] = phases = timing.take(seconds)
        shown = ", ".join(f"{k} {v}" for k, v in phases.items())
        print(f"   ({results[name]['seconds']} s: {shown})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    names = _names()
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    ap.add_argument("--only", help=f"comma-separated measurements to run, of: {', '.join(names)}")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/<date>.json)")
    ap.add_argument("--no-report", action="store_true", help="do not regenerate BENCHMARKS.md")
    args = ap.parse_args(argv)
    chosen = list(names)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            ap.error(f"unknown measurement(s) {', '.join(unknown)}; known: {', '.join(names)}")
        chosen = [n for n in names if n in wanted]
    day = time.strftime("%Y-%m-%d", time.gmtime())
    out = args.out or RESULTS / (f"{day}-quick.json" if args.quick else f"{day}.json")
    env = environment(args.quick)
    print(f"istmo bench ({env['mode']}): {', '.join(chosen)}", flush=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="istmo-bench-"))
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, tmp=tmp, results_dir=out.parent)
    try:
        results = asyncio.run(run_all(chosen, ctx))
    finally:
        ctx.close()
        shutil.rmtree(tmp, ignore_errors=True)
    doc: dict[str, Any] = {
        "environment": env,
        "measurements": chosen,
        "seconds": round(time.perf_counter() - t0, 1),
        "budget_s": timing.BUDGET_S[env["mode"]],
        "results": results,
    }
    lines, warning = timing.summary(doc)
    doc["over_budget"] = warning is not None
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {out} ({doc['seconds']} s)", flush=True)
    print("where the time went:", *lines, sep="\n", flush=True)
    if warning:
        banner = "!" * 78
        print(f"{banner}\n{warning}\n{banner}", file=sys.stderr, flush=True)
    if not args.no_report:
        from bench.report import write_report

        md = write_report(doc, results_path=out)
        print(f"report: {md}", flush=True)
    failed = [n for n, r in results.items() if "error" in r]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
