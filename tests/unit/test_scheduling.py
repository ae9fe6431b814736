"""The swap-aware queue policy and the worker that applies it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_server.domain.errors import ServerBusy
from mlx_server.domain.scheduling import next_job
from mlx_server.domain.worker import Cancelled, GenerationWorker, QueuePolicy

models = st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=12)


def drain(waiting: list[str | None], loaded: str | None, max_jumps: int,
          overtaken: dict[int, int] | None = None) -> list[int]:
    """Serve every job; return the order served. `overtaken` counts, per job, the picks that went
    past it while it was the oldest waiting."""
    queue = list(enumerate(waiting))
    served: list[int] = []
    jumps = 0
    while queue:
        index = next_job([m for _, m in queue], loaded, jumps, max_jumps)
        jumps = jumps + 1 if index else 0
        if index and overtaken is not None:
            overtaken[queue[0][0]] = overtaken.get(queue[0][0], 0) + 1
        original, model = queue.pop(index)
        loaded = model or loaded
        served.append(original)
    return served


@given(models, st.sampled_from(["a", "b", None]))
def test_no_jumps_means_arrival_order(waiting: list[str | None], loaded: str | None) -> None:
    assert drain(waiting, loaded, 0) == list(range(len(waiting)))


@given(models, st.sampled_from(["a", "b", None]), st.integers(0, 5))
def test_the_oldest_job_waits_at_most_max_jumps_turns(waiting: list[str | None],
                                                      loaded: str | None, max_jumps: int) -> None:
    overtaken: dict[int, int] = {}
    served = drain(waiting, loaded, max_jumps, overtaken)
    assert sorted(served) == list(range(len(waiting)))
    assert all(count <= max_jumps for count in overtaken.values())


def test_the_loaded_model_goes_first_within_the_bound() -> None:
    assert drain(["b", "a", "a", "a", "b"], "a", 2) == [1, 2, 0, 4, 3]


def slow(steps: int, delay: float, log: list[str], name: str):  # type: ignore[no-untyped-def]
    def produce(cancelled: Cancelled) -> Generator[int, None, None]:
        log.append(f"start {name}")
        try:
            for step in range(steps):
                if cancelled():
                    return
                time.sleep(delay)
                yield step
        finally:
            if cancelled():
                log.append(f"cancelled {name}")
    return produce


def test_a_full_queue_is_server_busy_and_a_long_wait_too() -> None:
    async def run() -> None:
        worker = GenerationWorker(QueuePolicy(max_queue=1, queue_timeout=0.05))
        log: list[str] = []
        first = worker.run(slow(20, 0.01, log, "first"))
        await anext(first)  # running: the queue is empty again
        second = worker.run(slow(1, 0, log, "second"))
        waiting = asyncio.ensure_future(anext(second))
        await asyncio.sleep(0.01)
        with pytest.raises(ServerBusy):
            await anext(worker.run(slow(1, 0, log, "third")))
        async for _ in first:
            pass
        with pytest.raises(ServerBusy, match="waited"):
            await waiting  # it waited ~0.2 s > 0.05 s
        worker.stop()

    asyncio.run(run())


def test_a_cancelled_stream_frees_the_worker_within_one_step() -> None:
    async def run() -> float:
        worker = GenerationWorker()
        log: list[str] = []
        first = worker.run(slow(1000, 0.02, log, "first"))
        await anext(first)
        started = time.monotonic()
        await first.aclose()  # the client went away
        await anext(worker.run(slow(1, 0, log, "next")))
        worker.stop()
        assert log == ["start first", "cancelled first", "start next"]
        return time.monotonic() - started

    assert asyncio.run(run()) < 0.5  # one 20 ms step, plus scheduling


def test_a_job_cancelled_while_waiting_never_runs() -> None:
    async def run() -> list[str]:
        worker = GenerationWorker()
        log: list[str] = []
        gate = threading.Event()

        def blocked(cancelled: Cancelled) -> Generator[int, None, None]:
            yield 0
            gate.wait(2)

        first = worker.run(blocked)
        await anext(first)
        waiting = worker.run(slow(1, 0, log, "waiting"))
        task = asyncio.ensure_future(anext(waiting))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await waiting.aclose()
        gate.set()
        async for _ in first:
            pass
        await anext(worker.run(slow(1, 0, log, "after")))
        worker.stop()
        return log

    assert asyncio.run(run()) == ["start after"]


def test_the_worker_reports_its_queue_depth_on_enqueue_dequeue_and_drop() -> None:
    """Through the hook it is given at construction (bootstrap wires it to the gauge)."""
    depths: list[int] = []

    async def run() -> None:
        worker = GenerationWorker(depth=depths.append)
        gate = threading.Event()

        def blocked(cancelled: Cancelled) -> Generator[int, None, None]:
            yield 0
            gate.wait(2)

        first = worker.run(blocked)
        await anext(first)  # queued, then taken: 1, 0
        log: list[str] = []
        second, third = worker.run(slow(1, 0, log, "second")), worker.run(slow(1, 0, log, "third"))
        tasks = [asyncio.ensure_future(anext(second)), asyncio.ensure_future(anext(third))]
        await asyncio.sleep(0.01)  # both waiting: 1, 2
        tasks[1].cancel()  # the client of the third went away
        await asyncio.gather(tasks[1], return_exceptions=True)
        await third.aclose()
        # dropped at once, while the first still runs: not when the thread next looks
        assert depths[-1] == 1 and worker.queued == 1
        gate.set()
        async for _ in first:
            pass
        await tasks[0]  # the second taken: 0
        worker.stop()

    asyncio.run(run())
    assert depths == [1, 0, 1, 2, 1, 0]
