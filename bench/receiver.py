"""A recipient agency in a process of its own, for item 3 (latency).

    python -m bench.receiver --keystore K --nats-url U --dedupe D --out FILE

Connects with the agency's keystore, as a ministry's own application does on its own
machine, receives (``IstmoClient.receive``, batch 16) and appends one line per bulletin
its handler is given to ``--out``: the bulletin id and ``time.perf_counter()`` at that
moment. On Linux ``perf_counter`` reads ``CLOCK_MONOTONIC``, one clock for the whole
machine, so the benchmark process compares it with the time its ``publish()`` returned.
Prints ``receiving`` once connected; stops at Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from pathlib import Path

from clients.sdk import IstmoClient, ReceivedBulletin


async def receive(keystore: Path, nats_url: str, dedupe: Path, out: Path) -> None:
    with out.open("a", buffering=1) as log:  # a line at a time: the reader polls the file

        async def app(b: ReceivedBulletin) -> None:
            log.write(f"{b.id} {time.perf_counter()!r}\n")

        async with await IstmoClient.connect(keystore, nats_url, dedupe_path=dedupe) as client:
            # Ctrl-C and SIGTERM end the receive, whatever this process inherited: a
            # shell starts a background job with SIGINT ignored, and the benchmark's
            # Ctrl-C then waited out its 30 s before killing it (90 s of a full run).
            receiving = asyncio.current_task()
            assert receiving is not None
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, receiving.cancel)
            print("receiving", flush=True)
            with contextlib.suppress(asyncio.CancelledError):
                await client.receive(app, timeout=3600, batch=16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keystore", type=Path, required=True)
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--dedupe", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(receive(args.keystore, args.nats_url, args.dedupe, args.out))


if __name__ == "__main__":
    main()
