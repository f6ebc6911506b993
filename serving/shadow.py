"""Shadow execution: mirrored requests run on candidate variants after the response is sent, never shown.

The request handler only ``offer``s a job to a bounded queue (no waiting: a full queue drops the job and
counts it); a few worker tasks run the jobs with a timeout. A shadow's error or timeout is counted and
logged, never raised into the primary request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)
Job = Callable[[], Awaitable[Any]]


class ShadowRunner:
    """A bounded queue of shadow jobs and ``workers`` tasks draining it."""

    def __init__(self, size: int, workers: int, on_drop: Callable[[str, str], None]) -> None:
        self.size, self.workers = size, workers
        self.on_drop = on_drop  # (variant, reason) for the metrics: full, timeout, error
        self._queue: asyncio.Queue[tuple[str, float, Job]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue(self.size)
        self._tasks = [asyncio.get_running_loop().create_task(self._work()) for _ in range(self.workers)]

    def offer(self, variant: str, timeout_s: float, job: Job) -> bool:
        """Queue a job without waiting; ``False`` (and a counted drop) when the queue is full."""
        if self._queue is None:
            self.on_drop(variant, "stopped")
            return False
        try:
            self._queue.put_nowait((variant, timeout_s, job))
            return True
        except asyncio.QueueFull:
            self.on_drop(variant, "full")
            return False

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            variant, timeout_s, job = await self._queue.get()
            try:
                await asyncio.wait_for(job(), timeout_s)
            except TimeoutError:
                self.on_drop(variant, "timeout")
            except Exception:  # noqa: BLE001 - a shadow never fails anything but itself
                log.exception("shadow %s failed", variant)
                self.on_drop(variant, "error")
            finally:
                self._queue.task_done()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for queued shadow jobs, e.g. before shutdown or in tests."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._queue = None
