"""Overlap a batch's wait on the disk with the work on the next one.

A relay batch has a CPU part (parse, verify, decide, record) and a waiting part (its
JetStream atomic batches are flushed to disk under ``sync_interval: always``, then the
ingest messages are acked). Done one after the other, the process idles for the flush
of every batch. ``Pipeline`` runs each batch's waiting part as a task while the caller
goes on with the next batch's CPU part, with at most ``depth`` such tails in flight:
``add`` waits for the oldest when the pipeline is full, so a slow disk slows the
caller down instead of letting work pile up.

A tail handles its own failures (the relay hands its batch back); ``Pipeline`` only
logs what escapes one, so a bug in a tail cannot stop the caller. ``drain`` waits for
every tail, as a worker does before it stops.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["Pipeline"]

log = logging.getLogger("istmo.pipeline")


class Pipeline:
    """At most ``depth`` tails (coroutines) running at once, finished in any order."""

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError("a pipeline needs a depth of at least 1")
        self.depth = depth
        self._tails: collections.deque[asyncio.Task[None]] = collections.deque()

    def __len__(self) -> int:
        return sum(not t.done() for t in self._tails)

    async def add(self, tail: Coroutine[Any, Any, None]) -> None:
        """Start ``tail``, first waiting while ``depth`` tails are still running."""
        while self._tails and (len(self._tails) >= self.depth or self._tails[0].done()):
            await self._finish(self._tails[0])
            self._tails.popleft()
        self._tails.append(asyncio.create_task(tail))

    async def drain(self) -> None:
        """Wait for every tail started so far."""
        while self._tails:
            await self._finish(self._tails[0])
            self._tails.popleft()

    @staticmethod
    async def _finish(task: asyncio.Task[None]) -> None:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                log.warning("a pipelined tail was cancelled")
                return
            # The caller is being cancelled: the tail (acks of stored work) still finishes.
            await asyncio.wait({task})
            raise
        except Exception:
            log.exception("a pipelined tail failed")
