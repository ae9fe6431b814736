"""One thread owns inference; the event loop only awaits what it produces."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, TypeVar

import attrs

T = TypeVar("T")
Cancelled = Callable[[], bool]
Producer = Callable[[Cancelled], Generator[T, None, None]]

_ITEM, _DONE, _ERROR = "item", "done", "error"


@attrs.frozen
class _Job:
    produce: Producer[Any]
    cancelled: threading.Event
    push: Callable[[tuple[str, Any]], None]


class GenerationWorker:
    """Runs jobs one at a time, in arrival order, on a single dedicated thread.

    A job is a generator function; each item it yields is handed to the awaiting coroutine through
    an asyncio queue. When the consumer goes away (client disconnect), the job sees `cancelled()`
    turn true and its generator is closed after the current item.
    """

    def __init__(self, name: str = "mlx-generation") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve_forever, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._jobs.put(None)
                self._thread.join()
                self._started = False
                self._thread = threading.Thread(target=self._serve_forever, name=self._thread.name,
                                                daemon=True)

    async def run(self, produce: Producer[T]) -> AsyncIterator[T]:
        """Run `produce` on the worker thread and yield what it yields."""
        self.start()
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def push(message: tuple[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody listens
                loop.call_soon_threadsafe(results.put_nowait, message)

        self._jobs.put(_Job(produce, cancelled, push))
        try:
            while True:
                kind, value = await results.get()
                if kind == _ITEM:
                    yield value
                elif kind == _ERROR:
                    raise value
                else:
                    return
        finally:
            cancelled.set()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run one function on the worker thread and return its result."""

        def once(_: Cancelled) -> Generator[T, None, None]:
            yield fn()

        async for result in self.run(once):
            return result
        raise RuntimeError("worker job ended without a result")  # pragma: no cover

    def _serve_forever(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._serve(job)

    @staticmethod
    def _serve(job: _Job) -> None:
        if job.cancelled.is_set():
            job.push((_DONE, None))
            return
        try:
            with contextlib.closing(job.produce(job.cancelled.is_set)) as items:
                for item in items:
                    job.push((_ITEM, item))
                    if job.cancelled.is_set():
                        break
        except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
            job.push((_ERROR, exc))
        else:
            job.push((_DONE, None))
