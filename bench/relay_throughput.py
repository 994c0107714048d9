"""2. Relay throughput: one ``istmo relay`` process, then two on the shared consumer.

Each drains a backlog of 2 KiB bulletins sealed by gt-police for 5 permitted recipients
(the issue's target case); the demo directory has 61 candidates for these labels, so
each bulletin takes 61 receive decisions, 1 bulletin row, 61 decision rows, about 62
audit events and 5 deliveries.
"""

from __future__ import annotations

from bench.context import Context
from bench.harness import WIDE_LABELS
from bench.relay_rate import backlog_rate, resolve_with_relay

NAME = "relay_throughput"
TITLE = "2. Relay throughput"


async def five_recipients(stack, gt):  # type: ignore[no-untyped-def]
    permitted = await resolve_with_relay(stack, gt, WIDE_LABELS)
    names = sorted(a for a in permitted if a != gt.agency)[:5]
    return {a: permitted[a] for a in names}  # type: ignore[index]


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    rows = []
    async with await stack.client("gt-police") as gt:
        chosen = await five_recipients(stack, gt)
        for procs in (1, 2):
            size = int(ctx.pick(100, 500) * procs)
            r = await backlog_rate(
                stack,
                gt,
                chosen,
                size,
                lambda p=procs: stack.start_relays(p),
                timeout=ctx.pick(5, 15),
            )
            r["processes"] = procs
            # Each relay's RSS just before it was stopped, after draining the backlog.
            r["rss_when_stopped_mib"] = [rss for _n, _p, rss in stack.last_stopped]
            r["peak_rss_mib"] = [peak for _n, peak, _r in stack.last_stopped]
            rows.append(r)
            print(f"  {procs} relay process(es): {r['per_s']} bulletins/s", flush=True)
    ctx.note_self()
    return {"recipients": 5, "rows": rows}
