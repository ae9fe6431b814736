"""One thread owns inference; the event loop only awaits what it produces."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, TypeVar

import attrs

from .errors import ServerBusy
from .scheduling import next_job

T = TypeVar("T")
Cancelled = Callable[[], bool]
Producer = Callable[[Cancelled], Generator[T, None, None]]

_ITEM, _DONE, _ERROR = "item", "done", "error"


@attrs.frozen(eq=False)  # compared by identity: each job is one request
class _Job:
    produce: Producer[Any]
    cancelled: threading.Event
    push: Callable[[tuple[str, Any]], None]
    model: str | None  # the model the job needs loaded, if any
    since: float  # when it was queued (time.monotonic)


@attrs.define
class QueuePolicy:
    max_queue: int = 16  # waiting jobs beyond the running one; more is 503 server_busy
    queue_timeout: float = 600.0  # seconds a job may wait before it is answered 503 instead
    max_jumps: int = 4  # later jobs for the loaded model served before an older one's swap


class GenerationWorker:
    """Runs jobs one at a time on a single dedicated thread, in arrival order but swap-aware
    (see scheduling.next_job), from a bounded queue.

    A job is a generator function; each item it yields is handed to the awaiting coroutine through
    an asyncio queue. When the consumer goes away (client disconnect), the job sees `cancelled()`
    turn true and its generator is closed after the current item; a job still waiting is dropped.

    What it reports goes through hooks given at construction (the composition root wires them):
    the loaded model it schedules around, jobs dropped unrun, and the queue depth at each change.
    """

    def __init__(self, policy: QueuePolicy | None = None, name: str = "mlx-generation", *,
                 loaded: Callable[[], str | None] = lambda: None,
                 dropped: Callable[[str | None], None] = lambda model: None,
                 depth: Callable[[int], None] = lambda waiting: None) -> None:
        self.policy = policy or QueuePolicy()
        self._loaded = loaded  # which model is in memory: lets the scheduler avoid swaps
        self._dropped = dropped  # a cancelled job left unrun, with the model it wanted
        self._depth = depth  # the waiting count, each time it changes (a queue-depth gauge)
        self._waiting: list[_Job] = []
        self._wakeup = threading.Condition()
        self._name = name
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running = False

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a job is running now (a generation, a load)."""
        return self._running

    def start(self) -> None:
        with self._wakeup:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._serve_forever, name=self._name,
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._wakeup:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._wakeup.notify_all()
        if thread is not None:
            thread.join()

    async def run(self, produce: Producer[T], *, model: str | None = None) -> AsyncGenerator[T, None]:
        """Run `produce` on the worker thread and yield what it yields. Raises ServerBusy when
        the queue is full or the job waited too long."""
        self.start()
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def push(message: tuple[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody listens
                loop.call_soon_threadsafe(results.put_nowait, message)

        job = _Job(produce, cancelled, push, model, time.monotonic())
        self._enqueue(job)
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
            self._withdraw(job)

    async def call(self, fn: Callable[[], T], *, model: str | None = None) -> T:
        """Run one function on the worker thread and return its result."""

        def once(_: Cancelled) -> Generator[T, None, None]:
            yield fn()

        # to the job's end, not just its one item: once this returns, the worker is idle again
        results = [result async for result in self.run(once, model=model)]
        if not results:  # pragma: no cover
            raise RuntimeError("worker job ended without a result")
        return results[0]

    def _enqueue(self, job: _Job) -> None:
        with self._wakeup:
            self._prune()
            if len(self._waiting) >= self.policy.max_queue:
                raise ServerBusy(f"The server is busy: {len(self._waiting)} requests are waiting "
                                 "for the model. Retry shortly.")
            self._waiting.append(job)
            self._depth(len(self._waiting))
            self._wakeup.notify()

    def _withdraw(self, job: _Job) -> None:
        """Take a job whose consumer left out of the queue now, if it is still waiting, so
        the depth reported (and `queued`) drop at once rather than when the thread next looks.
        The lock is only ever held for list operations, never during a job."""
        with self._wakeup:
            if job in self._waiting:
                self._waiting.remove(job)
                self._drop(job)
                self._depth(len(self._waiting))

    def _serve_forever(self) -> None:
        jumps = 0
        while (picked := self._next(jumps)) is not None:
            job, jumped = picked
            jumps = jumps + 1 if jumped else 0
            waited = time.monotonic() - job.since
            if job.cancelled.is_set():  # gone since the last look: do not load a model for it
                self._drop(job)
            elif waited > self.policy.queue_timeout:
                job.push((_ERROR, ServerBusy(
                    f"The request waited {waited:.0f} s for the model, longer than the server's "
                    f"queue timeout of {self.policy.queue_timeout:.0f} s. Retry shortly.")))
            else:
                self._running = True
                try:
                    last = self._serve(job)
                finally:
                    self._running = False
                job.push(last)  # after the flag: whoever it wakes sees the worker idle

    def _next(self, jumps: int) -> tuple[_Job, bool] | None:
        with self._wakeup:
            while True:
                self._prune()
                if self._waiting:
                    break
                if self._stopping:
                    return None
                self._wakeup.wait()
            index = next_job([job.model for job in self._waiting], self._loaded(), jumps,
                             self.policy.max_jumps)
            job = self._waiting.pop(index)
            self._depth(len(self._waiting))
            return job, index > 0

    def _prune(self) -> None:
        """Drop the waiting jobs whose consumer went away (call with the lock held)."""
        gone = [w for w in self._waiting if w.cancelled.is_set()]
        for job in gone:
            self._waiting.remove(job)
            self._drop(job)
        if gone:
            self._depth(len(self._waiting))

    def _drop(self, job: _Job) -> None:
        """End a job that never ran: its consumer went away."""
        job.push((_DONE, None))
        self._dropped(job.model)

    @staticmethod
    def _serve(job: _Job) -> tuple[str, Any]:
        """Run a job, pushing its items; returns the message that ends it (done, or the error
        for the awaiting coroutine to re-raise)."""
        try:
            with contextlib.closing(job.produce(job.cancelled.is_set)) as items:
                for item in items:
                    job.push((_ITEM, item))
                    if job.cancelled.is_set():
                        break
        except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
            return (_ERROR, exc)
        return (_DONE, None)
