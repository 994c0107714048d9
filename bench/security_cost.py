"""1. The cost of security: the real relay against a bare nats-py forwarder, same run,
same nats-server (``sync_interval: always``), N = 1, 5, 20, 60 recipients.

Both drain an identical backlog of 2 KiB bulletins sealed by gt-police for the first N
agencies the policy permits (labels: border-incident, RESTRICTED, TLP GREEN, releasable
to SICA and CARICOM). The relay parses, verifies, decides for every candidate, stores
bulletin, decisions and audit events, delivers and acks; the forwarder only delivers,
publishes one audit-stream event and acks. Ratio = relay / forwarder.

One relay process (the one that answered the resolve) drains the four relay backlogs in
turn; then a fresh forwarder per N (its recipients are on its command line) drains the
bare ones.
"""

from __future__ import annotations

from bench.context import Context
from bench.harness import WIDE_LABELS
from bench.relay_rate import backlog_rate, resolve_with_relay

NAME = "security_cost"
# quick? -> recipients -> (bare backlog, relay backlog, time cap in seconds)
# A worker takes 64 at a time and acks a batch only when all its N deliveries are stored,
# so a cap must fit a batch; in full mode a backlog is at least one batch. Quick mode
# drains half a batch at N = 20 (32 bulletins, 640 deliveries) and a quarter at N = 60
# (16 bulletins of ~105 KB each stored 61 times under sync_interval: always): the disk,
# not the worker, sets those rates, and a bigger backlog only takes longer.
SIZES = {
    True: {1: (300, 100, 5.0), 5: (200, 100, 5.0), 20: (32, 32, 10.0), 60: (16, 16, 15.0)},
    False: {1: (1000, 400, 10.0), 5: (600, 400, 10.0), 20: (128, 128, 15.0), 60: (64, 64, 15.0)},
}
TITLE = "1. Cost of security: relay vs bare forwarder"


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    sizes = SIZES[ctx.quick]
    relay: dict[int, dict[str, object]] = {}
    bare: dict[int, dict[str, object]] = {}
    async with await stack.client("gt-police") as gt:
        permitted = await resolve_with_relay(stack, gt, WIDE_LABELS, keep_relay=True)
        # The originator's own copy last: the demo has 60 others for these labels.
        names = sorted(permitted, key=lambda a: (a == "gt-police", a))
        chosen = {n: {a: permitted[a] for a in names[:n]} for n in sizes if n <= len(names)}
        try:
            for n, recipients in chosen.items():
                _bare_n, relay_n, cap = sizes[n]
                relay[n] = await backlog_rate(
                    stack,
                    gt,
                    recipients,
                    relay_n,
                    lambda: stack.ensure_relays(1),
                    timeout=cap,
                    keep_workers=True,
                )
                print(f"  N={n:>2}: relay {relay[n]['per_s']}/s", flush=True)
        finally:
            stack.stop_workers()
        for n, recipients in chosen.items():
            bare_n, _relay_n, cap = sizes[n]
            bare[n] = await backlog_rate(
                stack,
                gt,
                recipients,
                bare_n,
                lambda r=recipients: stack.start_forwarder(sorted(r)),
                timeout=cap,
            )
            print(f"  N={n:>2}: bare {bare[n]['per_s']}/s", flush=True)
    rows: list[dict[str, object]] = []
    for n in sizes:
        if n not in chosen:
            rows.append({"recipients": n, "error": f"only {len(names)} permitted"})
            continue
        b, r = bare[n], relay[n]
        ratio = r["per_s"] / b["per_s"] if b["per_s"] else None  # type: ignore[operator]
        rows.append(
            {
                "recipients": n,
                "bare_per_s": b["per_s"],
                "relay_per_s": r["per_s"],
                "ratio": round(ratio, 3) if ratio is not None else None,
                "bare": b,
                "relay": r,
            }
        )
    ctx.note_self()
    return {"permitted_for_labels": len(permitted), "rows": rows}
