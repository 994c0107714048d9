"""Where the relay's time goes: one ``istmo relay`` process under pyinstrument.

The relay drains a backlog of 2 KiB bulletins for 5 recipients (as item 2) while
pyinstrument samples it (every 1 ms) from the moment its imports are done
(``bench/profiled_relay.py``: the imports are start-up, not the relay's work, and under
the profiler they doubled its start); at Ctrl-C the relay stops cleanly and its call
tree is written to ``relay-profile[-quick].txt`` beside the results file (by default
``bench/results/``). BENCHMARKS.md's closing notes read from it. The profiled relay starts
while the backlog is sealed (the ingest consumer paused meanwhile, as in items 1 and 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.context import Context
from bench.harness import Proc
from bench.relay_rate import backlog_rate
from bench.relay_throughput import five_recipients
from bench.timing import phase

NAME = "profile"
TITLE = "Profile of the relay (pyinstrument)"
ROOT = Path(__file__).resolve().parent.parent


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    out = ctx.results_dir / ("relay-profile-quick.txt" if ctx.quick else "relay-profile.txt")

    def start() -> None:
        argv = [sys.executable, "-m", "bench.profiled_relay", "--out", str(out), "relay"]
        argv += ["--data-dir", str(stack.data_dir), "--nats-url", stack.nats_url]
        with phase("start profiled relay"):
            proc = Proc(f"{stack.name}: relay (profiled)", argv, stack.root / "relay-prof.log")
            proc.graceful = True  # pyinstrument writes the profile as the relay stops
            stack.workers.append(proc.start())
            proc.wait_for("relay connected", 120)

    async with await stack.client("gt-police") as gt:
        chosen = await five_recipients(stack, gt)
        r = await backlog_rate(
            stack, gt, chosen, int(ctx.pick(100, 256)), start, timeout=ctx.pick(6, 30)
        )
    print(f"  profiled relay: {r['per_s']}/s; profile in {out}", flush=True)
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    return {"profile": str(shown), "relay": r}
