"""1. The cost of security: the real relay against a bare nats-py forwarder, same run,
same nats-server (``sync_interval: always``), N = 1, 5, 20, 60 recipients.

Both drain an identical backlog of 2 KiB bulletins sealed by gt-police for the first N
agencies the policy permits (labels: border-incident, RESTRICTED, TLP GREEN, releasable
to SICA and CARICOM). The relay parses, verifies, decides for every candidate, stores
bulletin, decisions and audit events, delivers and acks; the forwarder only delivers,
publishes one audit-stream event and acks. Ratio = relay / forwarder.
"""

from __future__ import annotations

from bench.context import Context
from bench.harness import WIDE_LABELS
from bench.relay_rate import backlog_rate, resolve_with_relay

NAME = "security_cost"
# quick? -> recipients -> (bare backlog, relay backlog, time cap in seconds)
SIZES = {
    True: {1: (300, 100, 5.0), 5: (200, 100, 5.0), 20: (128, 128, 15.0), 60: (64, 64, 20.0)},
    False: {1: (1500, 500, 10.0), 5: (800, 500, 10.0), 20: (256, 256, 15.0), 60: (64, 64, 15.0)},
}
TITLE = "1. Cost of security: relay vs bare forwarder"


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    rows = []
    async with await stack.client("gt-police") as gt:
        permitted = await resolve_with_relay(stack, gt, WIDE_LABELS)
        # The originator's own copy last: the demo has 60 others for these labels.
        names = sorted(permitted, key=lambda a: (a == "gt-police", a))
        for n in (1, 5, 20, 60):
            # Backlogs (bare, relay) and time caps: a worker takes 64 at a time and acks a
            # batch only when all its N deliveries are stored, so a cap must fit a batch.
            bare_n, relay_n, cap = SIZES[ctx.quick][n]
            chosen = {a: permitted[a] for a in names[:n]}  # type: ignore[index]
            if len(chosen) < n:
                rows.append({"recipients": n, "error": f"only {len(chosen)} permitted"})
                continue
            bare = await backlog_rate(
                stack,
                gt,
                chosen,  # type: ignore[arg-type]
                bare_n,
                lambda c=chosen: stack.start_forwarder(sorted(c)),
                timeout=cap,
            )
            relay = await backlog_rate(
                stack,
                gt,
                chosen,  # type: ignore[arg-type]
                relay_n,
                lambda: stack.start_relays(1),
                timeout=cap,
            )
            ratio = relay["per_s"] / bare["per_s"] if bare["per_s"] else None  # type: ignore[operator]
            rows.append(
                {
                    "recipients": n,
                    "bare_per_s": bare["per_s"],
                    "relay_per_s": relay["per_s"],
                    "ratio": round(ratio, 3) if ratio is not None else None,
                    "bare": bare,
                    "relay": relay,
                }
            )
            print(f"  N={n:>2}: bare {bare['per_s']}/s, relay {relay['per_s']}/s", flush=True)
    ctx.note_self()
    return {"permitted_for_labels": len(permitted), "rows": rows}
