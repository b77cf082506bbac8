"""The batcher on its own: batches by size and by delay, results back to the right callers, bounds."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from loopline_core.errors import ErrorKind, LooplineError
from loopline_inference.domain.batching import Batcher


class Recorder:
    """A backend that sums each row, remembers the batch sizes it saw, and can be held."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        await self.gate.wait()
        self.sizes.append(len(x))
        if self.fail:
            raise RuntimeError("boom")
        return x.sum(axis=1).astype("<f4")


def _rows(i: int, n: int = 1) -> np.ndarray:
    return np.full((n, 3), float(i), dtype=np.float32)


async def test_concurrent_requests_share_batches_and_each_gets_its_own_rows() -> None:
    run = Recorder()
    b = Batcher(run, max_batch=8, max_delay_s=0.05, max_queue=100)
    out = await asyncio.gather(*(b.submit(_rows(i, 1 + i % 2)) for i in range(16)))
    for i, scores in enumerate(out):
        assert scores.tolist() == [3.0 * i] * (1 + i % 2)
    assert sum(run.sizes) == 24 and max(run.sizes) <= 8
    assert len(run.sizes) < 16, "requests shared batches"
    assert b.stats.execution_count == len(run.sizes) and b.stats.inference_count == 24
    assert b.stats.success.count == 16 and b.stats.compute_infer.count == 16
    assert sum(d.count for d in b.stats.batches.values()) == len(run.sizes)
    await b.close()


async def test_an_idle_batcher_runs_at_once_and_a_busy_one_gathers_requests() -> None:
    run = Recorder()
    b = Batcher(run, max_batch=4, max_delay_s=0.5, max_queue=100)
    await asyncio.wait_for(b.submit(_rows(1)), 0.4)  # far less than the delay: it did not wait for company
    assert run.sizes == [1]
    run.gate.clear()
    busy = asyncio.create_task(b.submit(_rows(0)))  # runs at once and holds the model
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(b.submit(_rows(i))) for i in range(1, 4)]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in waiting)
    run.gate.set()
    await asyncio.gather(busy, *waiting)
    assert run.sizes[1:] == [1, 3], "while the model was busy, three requests gathered into one batch"
    await b.close()


async def test_what_gathered_while_busy_runs_as_soon_as_the_model_is_idle() -> None:
    run = Recorder()
    run.gate.clear()
    b = Batcher(run, max_batch=8, max_delay_s=60.0, max_queue=100)
    busy = asyncio.create_task(b.submit(_rows(0)))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(b.submit(_rows(1)))  # gathers: a batch is running
    await asyncio.sleep(0.05)
    run.gate.set()
    await busy
    # the model is idle again: the waiting request runs now, not when its 60 s delay ends
    assert (await asyncio.wait_for(waiting, 30)).tolist() == [3.0]
    assert run.sizes == [1, 1]
    await b.close()


async def test_not_eager_every_batch_waits_the_delay_as_tritons_does() -> None:
    run = Recorder()
    b = Batcher(run, max_batch=4, max_delay_s=0.2, max_queue=100, eager=False)
    started = time.perf_counter()
    await b.submit(_rows(1))
    assert time.perf_counter() - started >= 0.15, "a lone request waited for company until the delay passed"
    await asyncio.gather(*(b.submit(_rows(i)) for i in range(4)))
    assert run.sizes == [1, 4], "four rows filled the batch: it ran as one, without waiting"
    await b.close()


async def test_a_request_larger_than_a_batch_runs_alone() -> None:
    run = Recorder()
    b = Batcher(run, max_batch=4, max_delay_s=0.01, max_queue=100)
    out = await b.submit(_rows(2, 10))
    assert out.tolist() == [6.0] * 10 and run.sizes == [10]
    await b.close()


async def test_a_full_queue_refuses_at_once() -> None:
    run = Recorder()
    run.gate.clear()  # the backend is stuck: nothing leaves the queue once a batch is running
    b = Batcher(run, max_batch=2, max_delay_s=0.0, max_queue=4)
    first = asyncio.create_task(b.submit(_rows(0, 2)))  # taken into the running batch
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(b.submit(_rows(i, 2))) for i in (1, 2)]  # 4 rows queued: full
    await asyncio.sleep(0.05)
    with pytest.raises(LooplineError) as err:
        await b.submit(_rows(9))
    assert err.value.kind is ErrorKind.RESOURCE_EXHAUSTED and "queue is full" in err.value.message
    run.gate.set()
    assert [s.tolist() for s in await asyncio.gather(first, *waiting)] == [[0.0, 0.0], [3.0, 3.0], [6.0, 6.0]]
    await b.close()


async def test_expired_requests_are_dropped_not_run() -> None:
    run = Recorder()
    run.gate.clear()
    b = Batcher(run, max_batch=1, max_delay_s=0.0, max_queue=10)
    busy = asyncio.create_task(b.submit(_rows(1)))
    await asyncio.sleep(0.05)
    late = asyncio.create_task(b.submit(_rows(2), deadline=time.monotonic() + 0.05))
    await asyncio.sleep(0.2)  # its deadline passes while the first batch holds the only runner
    run.gate.set()
    with pytest.raises(LooplineError) as err:
        await late
    assert err.value.kind is ErrorKind.DEADLINE_EXCEEDED
    await busy
    assert run.sizes == [1], "the expired request never reached the model"
    assert b.stats.fail.count == 1 and b.stats.inference_count == 1
    await b.close()


async def test_a_failing_backend_fails_its_batch_and_the_batcher_lives() -> None:
    run = Recorder()
    b = Batcher(run, max_batch=4, max_delay_s=0.02, max_queue=10)
    run.fail = True
    res = await asyncio.gather(*(b.submit(_rows(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, LooplineError) and r.kind is ErrorKind.INTERNAL and "boom" in r.message for r in res)
    run.fail = False
    assert (await b.submit(_rows(5))).tolist() == [15.0]
    await b.close()


async def test_close_refuses_what_is_queued() -> None:
    run = Recorder()
    run.gate.clear()
    b = Batcher(run, max_batch=1, max_delay_s=0.0, max_queue=10)
    running = asyncio.create_task(b.submit(_rows(1)))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(b.submit(_rows(2)))
    await asyncio.sleep(0.02)
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.02)
    run.gate.set()
    await closing
    assert (await running).tolist() == [3.0]
    with pytest.raises(LooplineError, match="unloaded"):
        await queued
