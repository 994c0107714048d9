"""8. Memory: the peak RSS of the relay, sequencer, API and SDK during the runs.

Every benchmark process's ``VmHWM`` (``/proc/<pid>/status``) is noted while it runs and
when it is stopped; the sequencer's is the ``ru_maxrss`` of the audit benchmark's child
process (``os.wait4``); the SDK's is this process's own ``ru_maxrss`` (SDK clients plus
the benchmark harness, an upper bound). ``istmo up --no-relay`` runs the HTTP API and the
stack's own sequencer in one process. "RSS when stopped" is ``VmRSS`` just before a
process was stopped, after its work: the steady-state figure the target is about.
Runs last; if no relay ran yet (``--only memory``) it runs a short relay load first.
"""

from __future__ import annotations

from bench.context import Context
from bench.relay_rate import backlog_rate
from bench.relay_throughput import five_recipients

NAME = "memory"
TITLE = "8. Memory (peak RSS)"
TIMES_NOTHING = True  # so a stack still stopping (item 9's) may go on stopping meanwhile


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    if not any(k.startswith("relay") for k in {**ctx.peaks, **stack.peaks}):
        async with await stack.client("gt-police") as gt:
            chosen = await five_recipients(stack, gt)
            await backlog_rate(
                stack, gt, chosen, 200, lambda: stack.start_relays(1), timeout=ctx.pick(10, 30)
            )
    stack.sample_peaks()
    ctx.close()  # stops the demo stack and takes its processes' peaks
    ctx.note_self()
    print(f"  peak RSS (MiB): {ctx.peaks}", flush=True)
    print(f"  RSS when stopped (MiB): {ctx.steady}", flush=True)
    return {"peak_rss_mib": dict(ctx.peaks), "rss_when_stopped_mib": dict(ctx.steady)}
