"""2. Relay throughput: one ``istmo relay`` process, and two on the shared consumer.

Each drains a backlog of 2 KiB bulletins sealed by gt-police for 5 permitted recipients
(the issue's target case); the demo directory has 61 candidates for these labels, so
each bulletin takes 61 receive decisions, 1 bulletin row, 61 decision rows, about 62
audit events and 5 deliveries. Two relays drain the two-process backlog first (both
start at once, while it is sealed: one start after the other cost 2-3 s more); then the
second is stopped and the first, warm from that backlog, drains the one-process backlog.
The RSS of each relay is read after its backlog. The first relay is left running for
item 3. Full mode drains 1,000 bulletins a process (until 2026-12-06: 256, about four
batches, so the pipeline's start and end and the 50 ms polls weighed on the figure), and
reports the CPU each side spent per bulletin (``cpu_ms_per_bulletin``: the relays and
nats-server), which says where the time goes on a machine whose cores they share.
"""

from __future__ import annotations

from bench.context import Context
from bench.harness import WIDE_LABELS, BenchStack
from bench.relay_rate import backlog_rate, resolve_with_relay
from clients.sdk import IstmoClient
from schemas.keys import EncryptionPublicKey

NAME = "relay_throughput"
TITLE = "2. Relay throughput"


async def five_recipients(
    stack: BenchStack, gt: IstmoClient, *, keep_relay: bool = False
) -> dict[str, EncryptionPublicKey]:
    permitted = await resolve_with_relay(stack, gt, WIDE_LABELS, keep_relay=keep_relay)
    names = sorted(a for a in permitted if a != gt.agency)[:5]
    return {a: permitted[a] for a in names}


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    rows = []
    async with await stack.client("gt-police") as gt:
        try:
            chosen = await five_recipients(stack, gt, keep_relay=True)
            for procs in (2, 1):
                stack.keep_workers(procs)  # the second relay stops before the 1-process run
                size = int(ctx.pick(100, 1000) * procs)
                r = await backlog_rate(
                    stack,
                    gt,
                    chosen,
                    size,
                    lambda p=procs: stack.ensure_relays(p),
                    timeout=ctx.pick(5, 15),
                    keep_workers=True,
                )
                r["processes"] = procs
                # Each relay's RSS after draining the backlog (before it is stopped).
                after = stack.worker_rss() or stack.last_stopped
                r["rss_when_stopped_mib"] = [rss for _n, _p, rss in after]
                r["peak_rss_mib"] = [peak for _n, peak, _r in after]
                rows.append(r)
                print(f"  {procs} relay process(es): {r['per_s']} bulletins/s", flush=True)
        except BaseException:
            stack.stop_workers()
            raise
        stack.keep_workers(1)  # for the latency measurement
    ctx.note_self()
    rows.sort(key=lambda r: int(r["processes"]))  # type: ignore[call-overload]
    return {"recipients": 5, "rows": rows}
