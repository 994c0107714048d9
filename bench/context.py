"""What every measurement gets: quick or full, a temporary directory, the shared demo
stack, and the peak memory of every component seen so far."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BenchStack

__all__ = ["Context"]


@dataclass
class Context:
    quick: bool
    tmp: Path
    results_dir: Path = Path(__file__).resolve().parent / "results"  # beside the results file
    peaks: dict[str, float] = field(default_factory=dict)  # component -> peak RSS, MiB
    steady: dict[str, float] = field(default_factory=dict)  # component -> RSS when stopped
    _demo: BenchStack | None = None
    _stopping: list[BenchStack] = field(default_factory=list)

    def pick(self, quick: int | float, full: int | float) -> int | float:
        """A size for this mode."""
        return quick if self.quick else full

    def demo_stack(self) -> BenchStack:
        """The stack with the demo directory (85 agencies), started on first use."""
        if self._demo is None:
            stack = BenchStack(self.tmp / "demo", "demo")
            self._demo = stack
            stack.start()
        return self._demo

    def stop_demo_workers(self) -> None:
        """Stop the relays a measurement left running on the demo stack for the next
        one (a module that takes them over says ``REUSES_RELAY = True``)."""
        if self._demo is not None:
            self._demo.stop_workers()

    def note(self, component: str, mib: float | None) -> None:
        if mib is not None:
            self.peaks[component] = max(self.peaks.get(component, 0.0), mib)

    def absorb(self, stack: BenchStack, suffix: str = "") -> None:
        """Take the peaks a stack noted (call after it stopped its processes)."""
        for k, v in stack.peaks.items():
            self.note(k + suffix, v)
        for k, v in stack.steady.items():
            self.steady[k + suffix] = max(self.steady.get(k + suffix, 0.0), v)

    def note_self(self) -> None:
        """This process: the SDK clients plus the benchmark harness."""
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.note("sdk (benchmark process: SDK clients + harness)", round(rss, 1))

    def stop_later(self, stack: BenchStack, *, kill: bool = False) -> None:
        """Ctrl-C ``stack`` now (its memory is noted) and let it exit while the run goes
        on; ``wait_stopped`` (or ``close``) waits for it. For a stack that takes long to
        stop, when what follows does not time anything (or waits first). ``kill``: kill
        its processes instead (``BenchStack.stop``)."""
        stack.stop(wait=False, kill=kill)
        self._stopping.append(stack)

    def wait_stopped(self) -> None:
        while self._stopping:
            self._stopping.pop().wait_stopped()

    def close(self) -> None:
        """Stop every stack. The demo stack is killed (its memory noted first): its
        figures are all taken, and nothing measures its orderly stop."""
        if self._demo is not None:
            self._demo.stop(kill=True)
            self.absorb(self._demo)
            self._demo = None
        self.wait_stopped()
