"""``istmo relay`` under pyinstrument, its imports left out of the profile.

    python -m bench.profiled_relay --out FILE [--interval S] relay --data-dir D --nats-url U

Imports what ``istmo relay`` imports before it does any work (the broker's server parts:
about 1.5 s of a relay's start-up, 3 s under the profiler), then runs the same command,
``clients.cli.main`` with the arguments after the options, with pyinstrument sampling
from there on: opening the data directory, connecting, and the relay's work until Ctrl-C
stops it cleanly. The call tree is written to ``--out`` as text, as ``pyinstrument -r
text`` writes it. Started by ``bench/profile_relay.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where the call tree goes")
    ap.add_argument("--interval", type=float, default=0.001, help="seconds between samples")
    args, istmo_args = ap.parse_known_args()

    from pyinstrument import Profiler

    import broker.runtime.stack  # noqa: F401 -- what `istmo relay` imports first, not profiled
    from clients.cli import main as istmo

    profiler = Profiler(interval=args.interval)
    profiler.start()
    try:
        return istmo(istmo_args)
    finally:
        profiler.stop()
        args.out.write_text(profiler.output_text(unicode=True, color=False))


if __name__ == "__main__":
    raise SystemExit(main())
