"""DynamicBatcher: batches form under concurrency, bounds hold, failures stay per batch."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

import numpy as np
import pytest

from qdeploy.serving import DynamicBatcher, RequestError
from tests.serving_helpers import SlowDoubler

T = TypeVar("T")


def rows(count: int, value: float, width: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.full((count, width), value, np.float32)}


def run(batcher: DynamicBatcher, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` with the batcher started, and closed (drained) afterwards."""
    async def main() -> T:
        batcher.start()
        try:
            return await body()
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    engine = SlowDoubler(delay_s=0.02)
    batcher = DynamicBatcher([engine], max_batch=8, max_delay_s=0.05, max_queue=64)

    async def body():
        return await asyncio.gather(*(batcher.submit(rows(1 + i % 3, float(i)), 5.0) for i in range(12)))

    for i, out in enumerate(run(batcher, body)):
        np.testing.assert_array_equal(out["y"], np.full((1 + i % 3, 4), 2.0 * i, np.float32))
    assert sum(engine.batches) == sum(1 + i % 3 for i in range(12))
    assert 1 < max(engine.batches) <= 8


def test_the_delay_bounds_the_wait_of_a_lonely_request() -> None:
    engine = SlowDoubler()
    batcher = DynamicBatcher([engine], max_batch=8, max_delay_s=0.2, max_queue=4)

    async def body():
        started = time.monotonic()
        await batcher.submit(rows(1, 1.0), 5.0)
        return time.monotonic() - started

    assert 0.15 < run(batcher, body) < 1.5 and engine.batches == [1]


def test_a_full_queue_answers_503_at_once() -> None:
    engine = SlowDoubler(delay_s=0.3)
    batcher = DynamicBatcher([engine], max_batch=1, max_delay_s=0.0, max_queue=2)

    async def body():
        running = asyncio.ensure_future(batcher.submit(rows(1, 0.0), 5.0))
        await asyncio.sleep(0.05)  # the first request is in the engine, the queue is empty
        waiting = [asyncio.ensure_future(batcher.submit(rows(1, float(i)), 5.0)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 2
        started = time.monotonic()
        with pytest.raises(RequestError, match=r"queue is full \(2 waiting") as refused:
            await batcher.submit(rows(1, 3.0), 5.0)
        assert time.monotonic() - started < 0.1
        return refused.value.status, await asyncio.gather(running, *waiting)

    status, done = run(batcher, body)
    assert status == 503 and len(done) == 3 and engine.batches == [1, 1, 1]


def test_a_timed_out_request_gets_504_and_never_runs() -> None:
    engine = SlowDoubler(delay_s=0.2)
    batcher = DynamicBatcher([engine], max_batch=1, max_delay_s=0.0, max_queue=8)

    async def body():
        running = asyncio.ensure_future(batcher.submit(rows(1, 0.0), 5.0))
        await asyncio.sleep(0.02)
        with pytest.raises(RequestError, match="request timeout of 0.05 s") as late:
            await batcher.submit(rows(1, 7.0), 0.05)
        after = await batcher.submit(rows(1, 1.0), 5.0)
        await running
        return late.value.status, after

    status, after = run(batcher, body)
    assert status == 504 and after["y"][0, 0] == 2.0
    assert len(engine.batches) == 2  # the abandoned request was dropped from the queue


def test_requests_with_other_dims_never_share_a_batch() -> None:
    engine = SlowDoubler(delay_s=0.01, width="w")
    batcher = DynamicBatcher([engine], max_batch=8, max_delay_s=0.05, max_queue=16)

    async def body():
        return await asyncio.gather(*(batcher.submit(rows(1, float(i), width=4 + 2 * (i % 2)), 5.0)
                                      for i in range(6)))

    for i, out in enumerate(run(batcher, body)):
        assert out["y"].shape == (1, 4 + 2 * (i % 2)) and out["y"][0, 0] == 2.0 * i
    assert sum(engine.batches) == 6 and {shape[1] for shape in engine.shapes} == {4, 6}


def test_batch_size_limits_are_400() -> None:
    batcher = DynamicBatcher([SlowDoubler()], max_batch=4, max_delay_s=0.0, max_queue=4)

    async def body():
        with pytest.raises(RequestError, match=r"batch of 5 is outside 1..4") as big:
            await batcher.submit(rows(5, 0.0), 5.0)
        with pytest.raises(RequestError, match=r"batch of 0 is outside"):
            await batcher.submit(rows(0, 0.0), 5.0)
        return big.value.status

    assert run(batcher, body) == 400


def test_an_engine_failure_fails_only_its_batch() -> None:
    engine = SlowDoubler()
    batcher = DynamicBatcher([engine], max_batch=4, max_delay_s=0.0, max_queue=4)

    async def body():
        engine.fail_next = True
        with pytest.raises(RequestError, match="inference failed: device lost") as failed:
            await batcher.submit(rows(1, 1.0), 5.0)
        return failed.value.status, await batcher.submit(rows(1, 2.0), 5.0)

    status, out = run(batcher, body)
    assert status == 500 and out["y"][0, 0] == 4.0


def test_close_runs_every_queued_request_then_refuses_new_ones() -> None:
    engine = SlowDoubler(delay_s=0.05)
    batcher = DynamicBatcher([engine], max_batch=2, max_delay_s=1.0, max_queue=16)

    async def main():
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(rows(1, float(i)), 10.0)) for i in range(5)]
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await batcher.close()  # does not wait out the 1 s batching delay
        closing_took = time.monotonic() - started
        results = [task.result() for task in pending]
        with pytest.raises(RequestError, match="shutting down") as refused:
            await batcher.submit(rows(1, 0.0), 1.0)
        return results, closing_took, refused.value.status

    results, closing_took, status = asyncio.run(main())
    assert [out["y"][0, 0] for out in results] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert closing_took < 0.9 and status == 503


def test_instances_run_batches_in_parallel() -> None:
    engines = [SlowDoubler(delay_s=0.3), SlowDoubler(delay_s=0.3)]
    batcher = DynamicBatcher(engines, max_batch=1, max_delay_s=0.0, max_queue=4)

    async def body():
        started = time.monotonic()
        await asyncio.gather(batcher.submit(rows(1, 0.0), 5.0), batcher.submit(rows(1, 1.0), 5.0))
        return time.monotonic() - started

    assert run(batcher, body) < 0.55
    assert [e.batches for e in engines] == [[1], [1]]


def test_max_batch_zero_runs_each_request_alone() -> None:
    engine = SlowDoubler(delay_s=0.01)
    batcher = DynamicBatcher([engine], max_batch=0, max_delay_s=0.5, max_queue=8)

    async def body():
        return await asyncio.gather(*(batcher.submit(rows(3, float(i)), 5.0) for i in range(3)))

    outs = run(batcher, body)
    assert [out["y"].shape for out in outs] == [(3, 4)] * 3 and engine.batches == [3, 3, 3]
