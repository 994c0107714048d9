"""11. Attachments: MB/s up and down for 1, 20 and 100 MB files, and the SDK's memory.

On the demo stack with one relay: gt-police publishes a bulletin releasable to Belize
with one file of random bytes (``IstmoClient.publish(attachments=...)``: sealed in
512 KiB chunks, stored through the relay, then the envelope, then the relay's verdict);
bz-police receives it and saves the file (``save_attachments``: every chunk fetched
through the relay, checked and opened, written to disk). "Up" spans the whole publish,
"down" the save; both divide the file's size by that time. Each size runs in a child
process of its own that does nothing else, so its memory is the SDK's: "RSS growth" is
the highest ``VmHWM`` during the transfer (reset before it through
``/proc/self/clear_refs``) less ``VmRSS`` just before, the larger of up and down.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.timing import phase

NAME = "attachments"
TITLE = "11. Attachments: MB/s up and down, and the SDK's memory"
MB = 1_000_000


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


async def _transfer(keys: Path, nats_url: str, file: Path, inbox: Path) -> dict[str, Any]:
    from clients.sdk import IstmoClient
    from schemas.labels import Classification, Labels, Tlp

    labels = Labels(
        topic="drug-trafficking",
        classification=Classification.RESTRICTED,
        tlp=Tlp.AMBER,
        rel_to=("BZ",),
    )
    size = file.stat().st_size  # noqa: ASYNC240  # before anything is timed
    async with await IstmoClient.connect(keys / "gt-police.json", nats_url) as gt:
        base = _vm("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        result = await gt.publish(
            title="bench", text="b", labels=labels, attachments=[file], timeout=120
        )
        up_s = time.perf_counter() - t
        up_growth = _vm("VmHWM") - base
    if result.state != "accepted":
        raise RuntimeError(f"the bulletin was not accepted: {result.state}")
    async with await IstmoClient.connect(keys / "bz-police.json", nats_url) as bz:
        got = []

        async def keep(b: Any) -> None:
            if b.id == result.bulletin_id:
                got.append(b)

        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            await bz.receive(keep, count=50, timeout=2)
        if not got:
            raise RuntimeError("the recipient did not receive the bulletin")
        base = _vm("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        (saved,) = await bz.save_attachments(got[0], inbox)
        down_s = time.perf_counter() - t
        down_growth = _vm("VmHWM") - base
    if saved.stat().st_size != size:
        raise RuntimeError("the saved file is not the size sent")
    saved.unlink()
    return {
        "mb": round(size / MB),
        "up_s": round(up_s, 2),
        "down_s": round(down_s, 2),
        "up_mb_s": round(size / MB / up_s, 1),
        "down_mb_s": round(size / MB / down_s, 1),
        "rss_growth_mb": round(max(up_growth, down_growth), 1),
        "rss_growth_up_mb": round(up_growth, 1),
        "rss_growth_down_mb": round(down_growth, 1),
    }


def child() -> None:
    """The child process: one transfer, its figures as one JSON line on stdout."""
    keys, nats_url, file, inbox = sys.argv[1:5]
    row = asyncio.run(_transfer(Path(keys), nats_url, Path(file), Path(inbox)))
    print(json.dumps(row), flush=True)


def _random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * 1024 * 1024)
            f.write(os.urandom(n))
            left -= n
    return path


def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    stack.ensure_relays(1)
    rows = []
    for mb in (1, 20, 100):
        file = _random_file(ctx.tmp / f"attach-{mb}.bin", mb * MB)
        with phase(f"transfer {mb} MB"):
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from bench.attachments import child; child()",
                    str(stack.data_dir / "keys"),
                    stack.nats_url,
                    str(file),
                    str(ctx.tmp / "inbox"),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        file.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"the {mb} MB transfer failed: {done.stderr[-1500:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"  {row['mb']:>4} MB  up {row['up_mb_s']:>6.1f} MB/s ({row['up_s']} s)"
            f"  down {row['down_mb_s']:>6.1f} MB/s ({row['down_s']} s)"
            f"  SDK RSS growth {row['rss_growth_mb']} MB",
            flush=True,
        )
    stack.sample_peaks()
    return {"rows": rows, "chunk_bytes": 512 * 1024}
