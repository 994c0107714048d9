"""9. Directory size: 100 against 3,500 agencies (quick mode: 100 against 200).

For each size, a synthetic directory with the structure of ``policies/directory.json``
(``bench/synthetic_directory.py``, fixed seed) is loaded by a fresh ``istmo up`` (which
makes a keystore, NATS user and durable consumer for every agency), in NATS operator
mode (``NATS_AUTH``, ADR 0013: agencies' accounts are JWTs pushed to nats-server, the
mode for large directories). Measured:
  * stack start-up time: ``startup_s`` until ``istmo up`` says it is ready, and
    ``consumers_made_s`` until every agency's delivery consumers exist (past 1,000
    agencies a fresh start makes most of them once it is up, ADR 39; everything after
    is measured once they all exist);
  * recipient resolution in process over the stack's database (``policy_cost``): the
    publish decision, 60 receive decisions, every topic subscriber, and the relay's whole
    ``resolve`` answer (decisions + signed excerpt);
  * the SDK's ``resolve`` over NATS, once (seconds, or the error: the relay's answer
    holds the keys of every permitted agency, and must fit a NATS message);
  * relay throughput, 1 process (and 2 in full mode), 5 recipients, labels as item 1
    (the 5 and their keys are taken from the directory in process, so the rate does not
    depend on the SDK's resolve); in full mode from 3,500 agencies also ``relay_mixed``:
    2 processes on a backlog of 2,000 from 500 originators in turn (police agencies the
    policy lets receive it): as in SIENA's traffic from thousands of authorities, an
    originator's bulletins are about a second apart, so the policy engine's memo of a
    bulletin's decisions (one second, per originator) rarely serves, and what the relay
    pays is a new originator's decision, shared only by outline (ADR 42);
  * how long nats-server takes to apply a reload of that configuration (SIGHUP until
    ``/varz`` shows the new load time);
  * the time to confine a new agency in NATS: ``istmo admin agency add`` (timed
    separately: a CLI process), then from the SDK's ``enroll`` call over HTTP (keys made,
    registered, nats-server reloaded) until the new agency's NATS connection is accepted;
  * the time for a suspension to take effect in NATS (``suspend_effective_s``): with that
    agency connected, from the start of ``istmo admin suspend`` (a CLI process, as an
    administrator runs it) until nats-server has closed its connection and refuses a new
    one; ``suspend_cli_s`` is the CLI process's own time (it ends when the running stack
    answers that it applied the change), ``suspend_after_record_s`` the stack's part: from
    the time of the change's audit event (the stack's clock, this machine's) until then,
    and ``suspend_applied`` what the stack logged of applying it;
  * peak RSS of the relay and ``istmo up`` processes;
  * with ``ISTMO_BENCH_DIRECTORY_SIZES`` (on demand), ``restart_s``: ``istmo up`` again
    on the same data directory after an orderly stop.
Then SIENA's 2023 volume (1.79 million bulletins) is extrapolated from the relay rate
with 2 processes (or 1, doubled at best, where 2 were not run), and, as ``siena_mixed``,
from the mixed backlog's.

``ISTMO_BENCH_DIRECTORY_SIZES=100,3500,10000`` chooses other sizes (a stack each), for a
run on demand: a 10,000-agency stack does not fit the whole run's 10-minute budget.

Each row also has the policy engine's own figures at its size (``bench/policy_scale.py``,
in process over the same synthetic directory): ``policy_load_ms``, ``decision_ms`` and
``resolve_ms`` (p50 and p99), ``resolve_wide_ms``. Full mode adds a row of those alone
for 10,000 agencies (``in_process_only``: no stack is started at that size).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Awaitable

import nats
from nats.aio.client import Client as NATS

from bench.context import Context
from bench.harness import ISTMO, WIDE_LABELS, BenchStack
from bench.policy_cost import decision_figures, open_directory
from bench.policy_scale import engine_figures
from bench.relay_rate import backlog_rate
from bench.synthetic_directory import write_policy_dir
from bench.timing import phase
from broker.directory.service import DirectoryService
from broker.relay.queries import AgencyQueries
from clients.enroll import enroll
from clients.sdk import IstmoClient
from schemas.agency import ResolveRequest
from schemas.keys import EncryptionPublicKey
from schemas.subjects import inbox_prefix

NAME = "directory_size"
TITLE = "9. Directory size"
SIENA_PER_YEAR = 1_790_000
MIXED_ORIGINATORS = 500  # agencies the mixed backlog comes from, in turn
MIXED_CONNECTS = 50  # their SDK clients connecting at once
MIXED_BACKLOG = 2_000
MIXED_FROM = 3_500  # SIENA's size: the mixed backlog is drained at this size and above
SENDER = "s0001-police"
# The stacks run in operator mode (ADR 0013): accounts are JWTs pushed to nats-server, so a
# directory change reloads nothing; config mode re-renders and reloads every account on
# each change (~25 s to confine a new agency at 3,500 in the 2026-12-06 run).
NATS_AUTH = "operator"
IN_PROCESS_ONLY = 10_000  # agencies: the engine's figures, without a stack (full mode)


def admin_add(stack: BenchStack, agency: str) -> tuple[str, float]:
    argv = [
        ISTMO,
        "admin",
        "agency",
        "add",
        agency,
        "--name",
        "Benchmark: new police",
        "--state",
        "S0001",
        "--sector",
        "police",
        "--clearance",
        "CONFIDENTIAL",
        "--topic",
        "drug-trafficking",
        "--json",
        "--data-dir",
        str(stack.data_dir),
    ]
    if stack.policy_dir is not None:
        argv += ["--policy-dir", str(stack.policy_dir)]
    t = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"istmo admin agency add failed: {done.stderr[-1000:]}")
    return str(json.loads(done.stdout)["token"]), seconds


def _applied(stack: BenchStack) -> list[str]:
    """What the stack said of each directory change it applied, oldest first."""
    said = stack.up.output() if stack.up else ""
    marker = "directory change applied in"
    return [ln.split("directory change ", 1)[1][:200] for ln in said.splitlines() if marker in ln]


async def confine(stack: BenchStack, agency: str) -> dict[str, object]:
    before = len(_applied(stack))
    token, add_s = admin_add(stack, agency)
    # The enrolment is timed once the stack has applied the agency's addition, as when an
    # agency enrols after its administrator added it; until 2026-12-06 it started at once
    # and waited for that change's rebuild too.
    t_add = time.perf_counter()
    while len(_applied(stack)) <= before and time.perf_counter() - t_add < 60:
        await asyncio.sleep(0.02)
    add_applied_s = time.perf_counter() - t_add
    t0 = time.perf_counter()
    try:
        ks = await enroll(stack.api_url, token)
    except Exception as exc:
        said = [ln for ln in stack.up.output().splitlines() if "ERROR" in ln] if stack.up else []
        return {
            "admin_add_cli_s": round(add_s, 2),
            "error": f"enroll failed after {time.perf_counter() - t0:.1f} s: "
            f"{type(exc).__name__}: {exc}; stack: {said[-1:]}",
        }
    enrolled = time.perf_counter()
    attempts = 0
    user_jwt = ks.nats_jwt  # operator mode: the enrolment answer carries it
    deadline = time.monotonic() + 30
    out: dict[str, object] = {
        "admin_add_cli_s": round(add_s, 2),
        "add_applied_after_cli_s": round(add_applied_s, 3),
        "enroll_http_s": round(enrolled - t0, 3),
    }
    while True:
        attempts += 1
        try:
            await (await _dial(stack, agency, ks.nats_seed, user_jwt)).close()
            break
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            if time.monotonic() > deadline:
                # Say what the stack said (its log names the failed reload), not a guess.
                said = (
                    [ln for ln in stack.up.output().splitlines() if "ERROR" in ln]
                    if stack.up
                    else []
                )
                out["error"] = f"not accepted within 30 s ({exc}); stack: {said[-1:]}"
                out["connect_attempts"] = attempts
                return out
            await asyncio.sleep(0.05)
    out["enroll_to_connect_s"] = round(time.perf_counter() - t0, 3)
    out["connect_attempts"] = attempts
    # Where the enrolment's wait went: the stack logs each directory change it applies.
    applied = _applied(stack)
    if applied:
        out["enroll_applied"] = applied[-1]
    out.update(await _suspend(stack, agency, ks.nats_seed, user_jwt))
    return out


def _dial(stack: BenchStack, agency: str, seed: str, user_jwt: str | None) -> Awaitable[NATS]:
    """``agency``'s NATS connection, as its SDK makes it, not retried."""
    return nats.connect(
        stack.nats_url,
        nkeys_seed_str=seed,
        user_jwt_cb=None if user_jwt is None else user_jwt.encode,
        inbox_prefix=inbox_prefix(agency),
        connect_timeout=2,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=_quiet,
    )


async def _suspend(
    stack: BenchStack, agency: str, seed: str, user_jwt: str | None
) -> dict[str, object]:
    """Suspend ``agency`` while it is connected: how long until its connection is closed
    and a new one is refused."""
    held = await _dial(stack, agency, seed, user_jwt)
    argv = [ISTMO, "admin", "suspend", agency, "--note", "bench", "--data-dir", str(stack.data_dir)]
    if stack.policy_dir is not None:
        argv += ["--policy-dir", str(stack.policy_dir)]
    before = len(_applied(stack))
    t0, t0_wall = time.perf_counter(), time.time()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    exited: list[float] = []
    waiter = asyncio.create_task(proc.communicate())
    waiter.add_done_callback(lambda _t: exited.append(time.perf_counter()))
    # Watched from the start: the command ends only once the stack has applied the change
    # and rebuilt its directory. Its connection is watched until nats-server closes it
    # (cheap), then new connections are tried until one is refused.
    deadline = time.monotonic() + 30
    closed_at = refused_at = None
    while closed_at is None or refused_at is None:
        if waiter.done() and proc.returncode != 0:
            _out, err = waiter.result()
            await held.close()
            return {"suspend_error": f"istmo admin suspend failed: {err.decode()[-600:]}"}
        if closed_at is None and not held.is_connected:
            closed_at = time.perf_counter()
        if closed_at is not None and refused_at is None:
            try:
                await (await _dial(stack, agency, seed, user_jwt)).close()
            except (OSError, TimeoutError, nats.errors.Error):
                refused_at = time.perf_counter()
        if time.monotonic() > deadline:
            await held.close()
            await waiter
            return {
                "suspend_cli_s": round(exited[0] - t0, 3),
                "suspend_error": "not in effect within 30 s "
                f"(closed: {closed_at is not None}, refused: {refused_at is not None})",
            }
        await asyncio.sleep(0.01)
    await held.close()
    await waiter
    effective = max(closed_at, refused_at)
    out: dict[str, object] = {
        "suspend_cli_s": round(exited[0] - t0, 3),
        "suspend_effective_s": round(effective - t0, 3),
    }
    recorded_ms = _recorded_ms(stack, agency)
    if recorded_ms is not None:
        # The stack's part: from the change's audit event until NATS enforced it.
        out["suspend_after_record_s"] = round(effective - t0 + t0_wall - recorded_ms / 1000, 3)
    applied = _applied(stack)
    if len(applied) > before:
        out["suspend_applied"] = applied[-1]
    return out


def _recorded_ms(stack: BenchStack, agency: str) -> int | None:
    """When the stack's registry recorded ``agency``'s suspension (its audit event's time,
    epoch ms), read from its SQLite database."""
    db = sqlite3.connect(stack.data_dir / "istmo.db", timeout=30)
    try:
        row = db.execute(
            "SELECT time FROM audit_event WHERE type = 'agency.suspended' AND subject = ?"
            " ORDER BY seq DESC LIMIT 1",
            (agency,),
        ).fetchone()
    finally:
        db.close()
    return int(row[0]) if row else None


async def _quiet(_exc: Exception) -> None:
    return None


def reload_time(stack: BenchStack, timeout: float = 120) -> float | None:
    """Seconds nats-server takes to apply a reload of its current configuration (SIGHUP
    until ``/varz`` shows a new ``config_load_time``)."""
    pid = stack.nats_server_pid()
    if pid is None:
        return None
    url = f"http://127.0.0.1:{stack.ports['http']}/varz"

    def loaded() -> str:
        with urllib.request.urlopen(url, timeout=10) as r:
            return str(json.loads(r.read())["config_load_time"])

    before = loaded()
    t = time.perf_counter()
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while loaded() == before:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return round(time.perf_counter() - t, 3)


def restart_time(stack: BenchStack, *, timeout: float) -> float | None:
    """Seconds for ``istmo up`` to start again on the data directory it made (everything
    in place: agencies, keystores, accounts, consumers), after an orderly stop, as an
    operator restarts a deployment; None when it did not start again."""
    with phase("stop for a restart"):
        stack.stop()
    try:
        stack.start(timeout=timeout)
    except RuntimeError as exc:
        print(f"  the stack did not start again: {exc}", flush=True)
        return None
    return round(stack.startup_s, 1)


async def one_size(ctx: Context, agencies: int) -> dict[str, object]:
    root = ctx.tmp / f"dir-{agencies}"
    policy_dir = write_policy_dir(root / "policies", agencies)
    ctx.wait_stopped()  # the previous size's stack is gone before this one starts
    stack = BenchStack(root, f"{agencies} agencies", policy_dir=policy_dir, nats_auth=NATS_AUTH)
    row: dict[str, object] = {"agencies": agencies, "nats_auth": NATS_AUTH}
    rates: list[dict[str, object]] = []
    try:
        try:
            stack.start(timeout=float(ctx.pick(240, 400)))
            row["startup_s"] = round(stack.startup_s, 1)
            row["consumers_made_s"] = round(stack.consumers_s, 1)
        except RuntimeError as exc:
            # A finding, not a crash: say what the stack said; what can still be
            # measured in process (resolution over the prepared directory) still is.
            row["stack_error"] = str(exc)[-600:]
            print(f"  {agencies} agencies: the stack did not start: {exc}", flush=True)
        relay = None
        if "stack_error" not in row:
            # The relay (for the SDK's resolve and the backlog) starts while the directory
            # is opened in process: neither is timed; it is up, and idle, before the
            # decisions are.
            relay = asyncio.create_task(asyncio.to_thread(stack.ensure_relays, 1))
        try:
            with phase("open the directory in process"):
                local, directory = open_directory(policy_dir, stack.data_dir)
        finally:
            if relay is not None:
                await relay
        try:
            with phase("resolution in process"):
                row["resolution"] = decision_figures(
                    directory, originator=SENDER, reps=int(ctx.pick(20, 100))
                )
                chosen = five_permitted(directory)
                # The mixed backlog's originators: police agencies that may receive it
                # (so their bulletins pass the same policy), none of the recipients.
                originators = [
                    a
                    for a in _permitted(directory)
                    if a.endswith("-police") and a not in chosen and a != SENDER
                ][: MIXED_ORIGINATORS - 1]
        finally:
            assert local.registry is not None
            local.registry.close()
        del local, directory
        with phase("policy engine in process"):
            row.update(_engine_row(ctx, agencies))
        if "stack_error" not in row:
            rates = await _relay_rates(ctx, stack, agencies, chosen, row, originators)
            row["relay"] = rates
            with phase("nats reload"):
                row["nats_reload_s"] = reload_time(stack)
            with phase("confine a new agency"):
                row["confine"] = await confine(stack, "bench-new-police")
            stack.sample_peaks()
            if sizes_asked():
                row["restart_s"] = restart_time(stack, timeout=float(ctx.pick(240, 400)))
    finally:
        # Its figures are taken: killed (its memory noted first), for an orderly stop of
        # a 3,500-agency stack takes over 30 s that nothing measures.
        ctx.stop_later(stack, kill=True)
        ctx.absorb(stack, f" [{agencies} agencies]")
    row["peak_rss_mib"] = dict(stack.peaks)
    if not rates:
        row["siena"] = {"assumed": "no relay rate: the stack did not start"}
    else:
        best = max(rates, key=lambda r: r["processes"])  # type: ignore[arg-type,return-value]
        rate = float(best["per_s"])  # type: ignore[arg-type]
        procs = int(best["processes"])  # type: ignore[call-overload]
        machine_rate = rate if procs >= 2 else rate * 2  # 1 process measured: 2 at best
        minutes = SIENA_PER_YEAR / machine_rate / 60 if machine_rate else None
        row["siena"] = {
            "relay_processes_measured": procs,
            "machine_rate_per_s": round(machine_rate, 1),
            "assumed": "measured with 2 processes" if procs >= 2 else "1 process measured, x2",
            "minutes_for_1_79M": round(minutes, 1) if minutes else None,
            "under_30_min": bool(minutes and minutes < 30),
        }
    print(f"  {agencies} agencies: {json.dumps(row)[:600]}", flush=True)
    return row


def _permitted(directory: DirectoryService) -> list[str]:
    """The agencies the policy lets receive ``WIDE_LABELS`` from ``SENDER``, sorted."""
    q = AgencyQueries(directory.registry, directory)
    _, permitted = q.permitted(SENDER, ResolveRequest(labels=WIDE_LABELS), int(time.time()))
    return sorted(permitted)


def five_permitted(directory: DirectoryService) -> dict[str, EncryptionPublicKey]:
    """The first 5 agencies (but the sender) the policy lets receive ``WIDE_LABELS`` from
    ``SENDER``, with their current encryption keys, from the directory in process."""
    chosen: dict[str, EncryptionPublicKey] = {}
    for agency in _permitted(directory):
        key = directory.records[agency].encryption_key
        if agency != SENDER and key is not None and len(chosen) < 5:
            chosen[agency] = key.public_key()
    return chosen


async def sdk_resolve(sender: IstmoClient) -> dict[str, object]:
    """The SDK's ``resolve`` over NATS (the SDK's own 5 s request timeout), retried only
    while the relay that just started has not yet subscribed (an answer within 1 s)."""
    deadline = time.monotonic() + 10
    while True:
        t = time.perf_counter()
        try:
            permitted = await sender.resolve(WIDE_LABELS)
        except Exception as exc:
            seconds = time.perf_counter() - t
            if seconds < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                continue
            return {"error": f"{type(exc).__name__}: {exc}"[:300], "seconds": round(seconds, 3)}
        return {"permitted": len(permitted), "seconds": round(time.perf_counter() - t, 3)}


async def _relay_rates(
    ctx: Context,
    stack: BenchStack,
    agencies: int,
    chosen: dict[str, EncryptionPublicKey],
    row: dict[str, object],
    originators: list[str],
) -> list[dict[str, object]]:
    """One relay (started by ``one_size``) answers the SDK's resolve and drains the
    1-process backlog; a second one joins it for the 2-process backlog."""
    rates: list[dict[str, object]] = []
    try:
        async with await stack.client(SENDER) as sender:
            stack.ensure_relays(1)
            row["sdk_resolve"] = await sdk_resolve(sender)
            for procs in (1,) if ctx.quick else (1, 2):
                r = await backlog_rate(
                    stack,
                    sender,
                    chosen,
                    # 1,000 per process, as item 2: a backlog of 256 drained in under half
                    # a second, of which the drain's 50 ms poll alone was a tenth
                    int(ctx.pick(30, 1000)) * procs,
                    lambda p=procs: stack.ensure_relays(p),
                    timeout=ctx.pick(5, 15),
                    keep_workers=True,
                )
                r["processes"] = procs
                rates.append(r)
                print(f"  {agencies} agencies, {procs} relay(s): {r['per_s']}/s", flush=True)
            if not ctx.quick and originators and agencies >= MIXED_FROM:
                row["relay_mixed"] = await _mixed_rate(stack, sender, chosen, row, originators)
    finally:
        stack.stop_workers()
    return rates


async def _mixed_rate(
    stack: BenchStack,
    sender: IstmoClient,
    chosen: dict[str, EncryptionPublicKey],
    row: dict[str, object],
    originators: list[str],
) -> dict[str, object]:
    """The 2-relay backlog again, each bulletin from ``SENDER`` or one of
    ``originators`` in turn: nearer a region's traffic than one originator's backlog
    (the policy engine's memo of one originator's decisions rarely serves)."""
    others: list[IstmoClient] = []
    try:
        with phase("connect the originators"):
            for start in range(0, len(originators), MIXED_CONNECTS):
                batch = originators[start : start + MIXED_CONNECTS]
                connected = await asyncio.gather(
                    *(stack.client(a) for a in batch), return_exceptions=True
                )
                others += [c for c in connected if isinstance(c, IstmoClient)]
                failed = [c for c in connected if isinstance(c, BaseException)]
                if failed:
                    raise failed[0]
        r = await backlog_rate(
            stack,
            sender,
            chosen,
            MIXED_BACKLOG,
            lambda: stack.ensure_relays(2),
            timeout=30,
            keep_workers=True,
            senders=others,
        )
    finally:
        for c in others:
            await c.close()
    r["processes"] = 2
    r["originators"] = 1 + len(others)
    minutes = SIENA_PER_YEAR / float(r["per_s"]) / 60 if r.get("per_s") else None  # type: ignore[arg-type]
    row["siena_mixed"] = {
        "originators": r["originators"],
        "machine_rate_per_s": r.get("per_s"),
        "minutes_for_1_79M": round(minutes, 1) if minutes else None,
    }
    print(f"  mixed originators, 2 relays: {r['per_s']}/s", flush=True)
    return r


def _engine_row(ctx: Context, agencies: int) -> dict[str, object]:
    """The policy engine's figures at this size, under the names the rows use."""
    f = engine_figures(agencies, calls=int(ctx.pick(50, 200)), tmp=ctx.tmp)
    return {
        "policy_load_ms": f["load_ms"],
        "decision_ms": f["decision_ms"],
        "resolve_ms": f["resolve_ms"],
        "resolve_wide_ms": f["resolve_wide_ms"],
        "permitted_narrow": f["permitted_narrow"],
    }


def sizes_asked() -> tuple[int, ...]:
    """Directory sizes from ``ISTMO_BENCH_DIRECTORY_SIZES`` ("100,3500,10000"), for a run
    on demand beyond the 10-minute budget (a 10,000-agency stack); empty if unset."""
    raw = os.environ.get("ISTMO_BENCH_DIRECTORY_SIZES", "").strip()
    if not raw:
        return ()
    try:
        sizes = tuple(int(x) for x in raw.split(","))
    except ValueError:
        said = f"ISTMO_BENCH_DIRECTORY_SIZES must be numbers, like 100,3500: {raw!r}"
        raise SystemExit(said) from None
    if not all(10 <= n <= 20_000 for n in sizes):
        raise SystemExit("ISTMO_BENCH_DIRECTORY_SIZES: each size must be 10 to 20,000 agencies")
    return sizes


async def run(ctx: Context) -> dict[str, object]:
    sizes = sizes_asked() or ((100, 200) if ctx.quick else (100, 3500))
    rows = [await one_size(ctx, n) for n in sizes]
    if not ctx.quick and IN_PROCESS_ONLY not in sizes:
        with phase("policy engine in process"):
            rows.append(
                {"agencies": IN_PROCESS_ONLY, "in_process_only": True}
                | _engine_row(ctx, IN_PROCESS_ONLY)
            )
    ctx.note_self()
    return {"sizes": list(sizes), "rows": rows, "siena_bulletins_per_year": SIENA_PER_YEAR}
