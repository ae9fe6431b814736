"""One thread owns inference; the event loop only awaits what it produces.

Jobs are generator functions run on that thread. A job that generates text admits a row into the
engine and then yields `AwaitStep(row)` whenever it wants its row's next token: the worker parks
it, runs one engine step for every parked row together (continuous batching), and sends each row
its step. Everything else a job yields goes to the request that queued it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Any, TypeVar

import attrs

from .errors import DomainError, EngineUnavailable, ServerBusy
from .ports import RowId, RowProgress, StepReport
from .scheduling import BatchPolicy, Running, Waiting, plan_admission, plan_prefill

log = logging.getLogger(__name__)

T = TypeVar("T")
Cancelled = Callable[[], bool]
Producer = Callable[[Cancelled], Generator[Any, Any, None]]
Step = Callable[[Mapping[RowId, int]], StepReport]

_ITEM, _DONE, _ERROR = "item", "done", "error"


@attrs.frozen
class AwaitStep:
    """Yielded by a job: park me until my row's next step; the worker sends the step
    (a GenerationStep) back in. `to_prefill`, on the first await, is how many prompt tokens
    the row has to prefill before its first token."""

    row: RowId
    to_prefill: int = 0


@attrs.frozen(eq=False)  # compared by identity: each job is one request
class _Job:
    id: int
    produce: Producer
    cancelled: threading.Event
    push: Callable[[tuple[str, Any]], None]
    model: str | None  # the model the job needs loaded, if any
    since: float  # when it was queued (time.monotonic)
    generates: bool  # a generation (takes a batch slot) or a one-off call


@attrs.define(eq=False)
class _Row:
    """A started job parked on its row."""

    job: _Job
    items: Generator[Any, Any, None]
    row: RowId
    to_prefill: int


@attrs.define
class QueuePolicy:
    max_queue: int = 16  # waiting jobs beyond the running ones; more is 503 server_busy
    queue_timeout: float = 600.0  # seconds a job may wait before it is answered 503 instead
    max_jumps: int = 4  # later jobs for the loaded model served before an older one's swap
    max_batch: int = 1  # rows decoding together (continuous batching); 1: one at a time
    prefill_budget: int | None = None  # prompt tokens per step; None: the engine's chunk


class GenerationWorker:
    """Runs jobs on a single dedicated thread, from a bounded queue, admitted by the pure
    policy in `scheduling` (arrival order, swap-aware, at most `max_batch` rows at once).

    When the consumer goes away (client disconnect), its job is closed at the next step (a
    waiting one is dropped). A row's error ends that row only; a step failing as a whole ends
    every running row with EngineUnavailable (503) and the worker goes on: no request hangs.

    What it reports goes through hooks given at construction (the composition root wires them):
    the loaded model it schedules around, the engine step it drives, jobs dropped unrun, the
    queue depth at each change, and each step's figures.
    """

    def __init__(self, policy: QueuePolicy | None = None, name: str = "mlx-generation", *,
                 loaded: Callable[[], str | None] = lambda: None,
                 step: Step | None = None,
                 prefill_chunk: Callable[[], int] = lambda: 128,
                 dropped: Callable[[str | None], None] = lambda model: None,
                 depth: Callable[[int], None] = lambda waiting: None,
                 stepped: Callable[[int, StepReport], None] = lambda rows, report: None) -> None:
        self.policy = policy or QueuePolicy()
        self._loaded = loaded  # which model is in memory: lets the scheduler avoid swaps
        self._step = step
        self._prefill_chunk = prefill_chunk
        self._dropped = dropped  # a cancelled job left unrun, with the model it wanted
        self._depth = depth  # the waiting count, each time it changes (a queue-depth gauge)
        self._stepped = stepped  # after each engine step: the rows in the batch, the report
        self._waiting: list[_Job] = []
        self._rows: list[_Row] = []  # admission order
        self._ids = 0
        self._wakeup = threading.Condition()
        self._name = name
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._calling = False  # a one-off job (a load, a count) is running
        self.alive = True  # false once the thread died of a bug: /health says so

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def rows(self) -> int:
        """Rows in the running batch (prefilling or decoding)."""
        return len(self._rows)

    @property
    def busy(self) -> bool:
        """Whether anything runs now (a generation, a load)."""
        return self._calling or bool(self._rows)

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

    async def run(self, produce: Producer, *, model: str | None = None,
                  generates: bool = True) -> AsyncGenerator[Any, None]:
        """Run `produce` on the worker thread and yield what it yields. Raises ServerBusy when
        the queue is full or the job waited too long."""
        self.start()
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def push(message: tuple[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody listens
                loop.call_soon_threadsafe(results.put_nowait, message)

        with self._wakeup:
            self._ids += 1
            job = _Job(self._ids, produce, cancelled, push, model, time.monotonic(), generates)
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
            with self._wakeup:
                self._wakeup.notify()  # a parked row's job closes at the next look

    async def call(self, fn: Callable[[], T], *, model: str | None = None) -> T:
        """Run one function on the worker thread and return its result."""

        def once(_: Cancelled) -> Generator[T, None, None]:
            yield fn()

        # to the job's end, not just its one item: once this returns, the worker is idle again
        results = [result async for result in self.run(once, model=model, generates=False)]
        if not results:  # pragma: no cover
            raise RuntimeError("worker job ended without a result")
        return results[0]  # type: ignore[no-any-return]

    def _enqueue(self, job: _Job) -> None:
        with self._wakeup:
            self._prune()
            if not self.alive:
                raise EngineUnavailable("The generation thread stopped; the server must be "
                                        "restarted.")
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

    # -- the generation thread ----------------------------------------------------------------

    def _serve_forever(self) -> None:
        try:
            jumps = 0
            while (admission := self._admit(jumps)) is not None:
                started, expired, jumps = admission
                for job in expired:
                    waited = time.monotonic() - job.since
                    job.push((_ERROR, ServerBusy(
                        f"The request waited {waited:.0f} s for the model, longer than the "
                        f"server's queue timeout of {self.policy.queue_timeout:.0f} s. "
                        "Retry shortly.")))
                for job in started:
                    self._start(job)
                self._close_cancelled()
                if self._rows:
                    self._run_step()
        except BaseException as exc:  # a bug in the loop itself: fail everyone, never hang
            log.critical("the generation thread stopped: %r", exc, exc_info=exc)
            self._die()

    def _admit(self, jumps: int) -> tuple[list[_Job], list[_Job], int] | None:
        """Wait until there is something to do; then which waiting jobs start (and expire)."""
        with self._wakeup:
            while True:
                self._prune()
                if self._rows or self._waiting:
                    break
                if self._stopping:
                    return None
                self._wakeup.wait()
            if not self._waiting:
                return [], [], jumps
            decision = plan_admission(
                [Waiting(j.id, j.model, j.since, j.generates) for j in self._waiting],
                [Running(r.job.id, r.to_prefill) for r in self._rows],
                self._loaded(), jumps, self._batch_policy(), time.monotonic())
            by_id = {job.id: job for job in self._waiting}
            started = [by_id[i] for i in decision.start]
            expired = [by_id[i] for i in decision.expire]
            for job in (*started, *expired):
                self._waiting.remove(job)
            if started or expired:
                self._depth(len(self._waiting))
            return started, expired, decision.jumps

    def _batch_policy(self) -> BatchPolicy:
        policy = self.policy
        return BatchPolicy(max_batch=policy.max_batch,
                           prefill_budget=policy.prefill_budget or self._prefill_chunk(),
                           max_jumps=policy.max_jumps, queue_timeout=policy.queue_timeout)

    def _start(self, job: _Job) -> None:
        """Run a job until it parks on its row (or ends)."""
        if job.cancelled.is_set():  # gone since the last look: do not load a model for it
            self._drop(job)
            return
        self._calling = not job.generates
        try:
            items = job.produce(job.cancelled.is_set)
            if (row := self._advance(job, items, None)) is not None:
                self._rows.append(row)
        finally:
            self._calling = False

    def _advance(self, job: _Job, items: Generator[Any, Any, None], value: Any, *,
                 error: BaseException | None = None) -> _Row | None:
        """Send `value` (or throw `error`) into a job and pass on what it yields until it parks
        on its row (returned) or ends (None)."""
        try:
            item = items.throw(error) if error is not None else items.send(value)
            while True:
                if isinstance(item, AwaitStep):
                    return _Row(job, items, item.row, item.to_prefill)
                job.push((_ITEM, item))
                if job.cancelled.is_set():
                    items.close()
                    break
                item = next(items)
            end: tuple[str, Any] = (_DONE, None)
        except StopIteration:
            end = (_DONE, None)
        except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
            end = (_ERROR, exc)
        self._calling = False
        job.push(end)  # after the flag: whoever it wakes sees the worker idle
        return None

    def _close_cancelled(self) -> None:
        """Rows whose client went away leave the batch now, before the next step."""
        for row in [r for r in self._rows if r.job.cancelled.is_set()]:
            self._rows.remove(row)
            try:
                row.items.close()
            except BaseException as exc:
                log.warning("closing a cancelled job failed: %r", exc)
            row.job.push((_DONE, None))

    def _run_step(self) -> None:
        if self._step is None:
            raise RuntimeError("a job awaits a step but the worker drives no engine")
        budget = self.policy.prefill_budget or self._prefill_chunk()
        prefill = dict(plan_prefill([Running(r.row, r.to_prefill) for r in self._rows], budget))
        try:
            report = self._step(prefill)
        except BaseException as exc:  # the batch as a whole failed: every row ends with a 503
            unavailable = exc if isinstance(exc, EngineUnavailable) else EngineUnavailable(
                f"Inference failed for every running request ({type(exc).__name__}: {exc}). "
                "Retry shortly.")
            log.error("engine step failed: %r", exc)
            rows, self._rows = self._rows, []
            for row in rows:
                self._advance(row.job, row.items, None, error=unavailable)
            if not isinstance(exc, Exception):  # interpreter control flow: go on stopping
                raise
            return
        self._stepped(len(self._rows), report)
        by_row = {r.row: r for r in self._rows}
        for progress in report.rows:
            parked = by_row.get(progress.row)
            if parked is not None:
                self._deliver(parked, progress)

    def _deliver(self, parked: _Row, progress: RowProgress) -> None:
        parked.to_prefill = max(0, parked.to_prefill - progress.prefilled)
        if progress.error is None and progress.step is None:
            return  # still prefilling
        if progress.step is not None:
            parked.to_prefill = 0
        index = self._rows.index(parked)
        error: DomainError | None = progress.error
        resumed = self._advance(parked.job, parked.items, progress.step, error=error)
        if resumed is None:
            self._rows.pop(index)
        else:
            self._rows[index] = resumed
            resumed.to_prefill = parked.to_prefill

    def _die(self) -> None:
        """Fail every job, waiting or running, so that no request hangs on a dead thread."""
        self.alive = False
        dead = EngineUnavailable("The generation thread stopped; the server must be restarted.")
        with self._wakeup:
            waiting, self._waiting = self._waiting, []
            rows, self._rows = self._rows, []
        for job in waiting:
            job.push((_ERROR, dead))
        for row in rows:
            with contextlib.suppress(BaseException):
                row.items.close()
            row.job.push((_ERROR, dead))

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
