"""Dynamic batching: concurrent requests for one model share engine runs.

Triton's scheme, on asyncio: requests wait in a bounded FIFO queue; when an engine instance
is free, the scheduler takes the oldest request and waits at most `max_delay_s` (counted
from that request's arrival) for more, up to `max_batch` rows, then runs them as one batch
in the engine's worker thread and hands each request its rows of the outputs. While every
instance is busy the queue fills on its own, so batches grow with load without any added
delay; a batch that can no longer grow is queued in the worker behind the running one, so the
engine starts it without waiting for the event loop (which, under load, is busy with HTTP). A
request's timeout bounds its wait in the queue, as Triton's queue policy does: one that has
not started by then gets 504 and never runs; one that has started runs to the end.

All queue state lives on the event loop thread; only `Engine.run_checked` runs in the workers,
one single-thread executor per engine instance, so an engine is never entered by two threads
at once and runs its batches in order.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from qdeploy.runtime import Engine
from qdeploy.serving.protocol import RequestError

BatchObserver = Callable[[int, float], None]  # (rows in the batch, seconds the engine ran)
SHUTTING_DOWN = "the server is shutting down; retry on another replica"


@dataclass(eq=False)
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple  # requests batch together only when every non-batch dim agrees
    arrived: float
    future: asyncio.Future = field(repr=False)
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


class DynamicBatcher:
    """Queue, batch and run requests for one model on one or more engine instances.

    max_batch: most rows per engine run; 0 means the model has no batch axis and every
    request runs alone. max_delay_s: how long the oldest request may wait for company.
    max_queue: requests allowed to wait; more are refused with 503 at once.
    """

    def __init__(self, engines: Sequence[Engine], max_batch: int, max_delay_s: float, max_queue: int) -> None:
        if not engines:
            raise ValueError("a batcher needs at least one engine")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._engines = list(engines)
        self.on_batch: BatchObserver | None = None  # set by the server to feed its metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._workers = {id(engine): ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdeploy-engine")
                         for engine in engines}
        self._idle: asyncio.Queue[Engine] | None = None
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closing = False

    @property
    def instances(self) -> int:
        return len(self._engines)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for an engine (not yet running)."""
        return len(self._queue)

    def start(self) -> None:
        """Start scheduling on the running event loop (the server's lifespan start-up)."""
        self._idle = asyncio.Queue()
        for engine in self._engines:
            self._idle.put_nowait(engine)
        self._wakeup = asyncio.Event()
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name="qdeploy-batcher")

    def _rows(self, feeds: dict[str, np.ndarray]) -> int:
        if self.max_batch == 0:
            return 1
        rows = {array.shape[0] if array.ndim else 0 for array in feeds.values()}
        if len(rows) != 1:
            raise RequestError(f"inputs disagree on the batch size: {sorted(rows)}")
        (count,) = rows
        if not 1 <= count <= self.max_batch:
            raise RequestError(f"batch of {count} is outside 1..{self.max_batch} (the model's max_batch_size)")
        return count

    async def submit(self, feeds: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        """Outputs for validated `feeds`; RequestError 503 (queue full, closing) or 504 (not started in `timeout_s`)."""
        if self._closing or self._scheduler is None:
            raise RequestError(SHUTTING_DOWN, 503)
        rows = self._rows(feeds)
        if len(self._queue) >= self.max_queue:
            self._queue = collections.deque(p for p in self._queue if not p.future.done())
            if len(self._queue) >= self.max_queue:
                raise RequestError(f"the queue is full ({self.max_queue} waiting requests); retry later", 503)
        key = tuple((name, array.shape[1:], array.dtype) for name, array in sorted(feeds.items()))
        loop = asyncio.get_running_loop()
        pending = _Pending(feeds, rows, key, time.monotonic(), loop.create_future())
        pending.expiry = loop.call_later(timeout_s, self._expire, pending, timeout_s)
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    @staticmethod
    def _expire(pending: _Pending, timeout_s: float) -> None:
        """A request still queued at its timeout gets 504 (the scheduler then skips it)."""
        if not pending.future.done():
            pending.future.set_exception(
                RequestError(f"not started within the request timeout of {timeout_s:g} s (queue wait)", 504))

    async def close(self) -> None:
        """Refuse new requests, run every queued one, wait for running batches, free the workers."""
        self._closing = True
        if self._scheduler is not None:
            self._wakeup.set()
            await self._scheduler
            if self._running:
                await asyncio.wait(self._running)
        for worker in self._workers.values():
            worker.shutdown(wait=True)

    async def _schedule(self) -> None:
        while True:
            engine = await self._idle.get()
            batch = await self._next_batch()
            if not batch:  # closing and drained
                return
            task = asyncio.get_running_loop().create_task(self._execute(engine, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _drop_abandoned(self) -> None:
        """Forget requests whose caller stopped waiting (their timeout passed)."""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    def _fits(self, first: _Pending) -> list[_Pending]:
        """The oldest compatible requests that fit in one batch, in arrival order."""
        if self.max_batch == 0:
            return [first]
        batch, rows = [], 0
        for pending in self._queue:
            if pending.future.done():
                continue
            if pending.key != first.key or rows + pending.rows > self.max_batch:
                break
            batch.append(pending)
            rows += pending.rows
        return batch

    async def _arrival(self, timeout_s: float | None) -> bool:
        """Sleep until a request arrives (or close() is called); False when `timeout_s` ran out."""
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    def _can_grow(self, first: _Pending) -> bool:
        """Whether waiting could add rows: room is left and nothing waiting is left out."""
        if self.max_batch == 0 or self._closing:
            return False
        batch = self._fits(first)
        waiting = sum(1 for p in self._queue if not p.future.done())
        return len(batch) == waiting and sum(p.rows for p in batch) < self.max_batch

    async def _next_batch(self) -> list[_Pending]:
        """The next batch to run; [] once closing with nothing left to run."""
        while True:
            self._drop_abandoned()
            if not self._queue:
                if self._closing:
                    return []
                await self._arrival(None)
                continue
            first = self._queue[0]
            deadline = first.arrived + self.max_delay_s
            while self._can_grow(first):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not await self._arrival(remaining):
                    break
            if first.future.done():  # its caller gave up while it waited for company
                continue
            return self._take(first)

    def _take(self, first: _Pending) -> list[_Pending]:
        """Remove the batch that starts with `first` from the queue; its requests start now."""
        batch = self._fits(first)
        for pending in batch:  # running now: the queue timeout no longer applies
            pending.expiry.cancel()
        taken = {id(p) for p in batch}
        self._queue = collections.deque(p for p in self._queue if id(p) not in taken and not p.future.done())
        return batch

    def _ready_batch(self) -> list[_Pending]:
        """A batch that may start at once: [] when the queue is empty or its oldest may still wait for company."""
        self._drop_abandoned()
        if not self._queue:
            return []
        first = self._queue[0]
        if self._can_grow(first) and time.monotonic() < first.arrived + self.max_delay_s:
            return []
        return self._take(first)

    async def _execute(self, engine: Engine, batch: list[_Pending]) -> None:
        """Run `batch`, then whatever backlog is ready, on `engine`; then hand it back to the scheduler.

        While a batch runs, the next ready one (full, or past its delay) is already queued in the
        engine's worker, so the engine goes straight on to it; its results are handed out as soon
        as the event loop gets to them.
        """
        runs = collections.deque([(batch, self._launch(engine, batch))])
        while runs:
            if len(runs) == 1 and (staged := self._ready_batch()):
                runs.append((staged, self._launch(engine, staged)))
            batch, run = runs.popleft()
            await self._finish(batch, run)
        self._idle.put_nowait(engine)

    def _launch(self, engine: Engine, batch: list[_Pending]) -> asyncio.Future:
        feeds = batch[0].feeds if len(batch) == 1 else {
            name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
        return asyncio.get_running_loop().run_in_executor(self._workers[id(engine)], _timed_run, engine, feeds)

    async def _finish(self, batch: list[_Pending], run: asyncio.Future) -> None:
        """Hand each request its rows, or the engine's error (500, this batch only)."""
        outputs, error, seconds = await run
        offset = 0
        for pending in batch:
            if pending.future.done():
                pass
            elif error is not None:
                failure = RequestError(f"inference failed: {error}", 500)
                failure.__cause__ = error  # its traceback reaches the server log with the request id
                pending.future.set_exception(failure)
            else:
                pending.future.set_result(outputs if self.max_batch == 0 else
                                          {k: v[offset: offset + pending.rows] for k, v in outputs.items()})
            offset += pending.rows
        if self.on_batch is not None:
            self.on_batch(sum(p.rows for p in batch), seconds)


def _timed_run(engine: Engine, feeds: dict[str, np.ndarray]) -> tuple[dict | None, Exception | None, float]:
    """In the worker: (outputs, None, seconds), or (None, error, seconds); an engine failure never escapes."""
    started = time.monotonic()
    try:
        outputs = engine.run_checked(feeds)
    except Exception as exc:  # an engine failure fails this batch, never the server
        return None, exc, time.monotonic() - started
    return outputs, None, time.monotonic() - started
