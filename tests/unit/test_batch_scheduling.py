"""The continuous-batching policy: admission into the running batch and the prefill budget
(docs/batching.md §3), by example and by simulating it step by step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_server.domain.scheduling import (
    Admission,
    BatchPolicy,
    Running,
    Waiting,
    next_job,
    plan_admission,
    plan_prefill,
)

# -- examples ------------------------------------------------------------------------------------


def admit(waiting: Sequence[Waiting], running: Sequence[Running] = (), loaded: str | None = "a",
          jumps: int = 0, now: float = 0.0, **policy: float) -> Admission:
    return plan_admission(waiting, running, loaded, jumps, BatchPolicy(**policy), now)


def w(id: int, model: str | None = "a", since: float = 0.0, generates: bool = True) -> Waiting:
    return Waiting(id, model, since, generates)


def test_the_policy_defaults_and_refuses_nonsense() -> None:
    assert BatchPolicy() == BatchPolicy(max_batch=1, prefill_budget=128, max_jumps=4,
                                        queue_timeout=600.0)
    BatchPolicy(max_batch=1, prefill_budget=1, max_jumps=0, queue_timeout=0.001)
    for wrong in ({"max_batch": 0}, {"prefill_budget": 0}, {"max_jumps": -1},
                  {"queue_timeout": 0}, {"queue_timeout": -1.0}):
        with pytest.raises(ValueError):
            BatchPolicy(**wrong)


def test_loaded_model_jobs_fill_the_free_slots_in_arrival_order() -> None:
    waiting = [w(1), w(2), w(3), w(4)]
    assert admit(waiting, [Running(0, 0)], max_batch=3) == Admission((1, 2), (), 0)
    assert admit(waiting, [], max_batch=8) == Admission((1, 2, 3, 4), (), 0)
    assert admit(waiting, [Running(0, 5)], max_batch=1) == Admission((), (), 0)


def test_nothing_waiting_starts_nothing() -> None:
    assert admit([], [Running(0, 0)], jumps=2) == Admission((), (), 2)


def test_another_model_waits_for_the_batch_to_drain_then_swaps() -> None:
    waiting = [w(1, "b"), w(2, "b")]
    assert admit(waiting, [Running(0, 0)], max_batch=4) == Admission((), (), 0)
    # nothing runs: the first starts (a swap to b), then b is loaded and the second joins it
    assert admit(waiting, [], max_batch=4) == Admission((1, 2), (), 0)
    # without a slot for the second
    assert admit(waiting, [], max_batch=1) == Admission((1,), (), 0)
    # a swap in the same call only once the jobs started before it have ended: never
    assert admit([w(1), w(2, "b")], [], max_batch=4) == Admission((1,), (), 0)
    # loading a model from nothing is a swap too, with nothing running
    assert admit([w(1, "b"), w(2, "b")], [], loaded=None, max_batch=2) == Admission((1, 2), (), 0)


def test_a_job_for_the_loaded_model_jumps_ahead_at_most_max_jumps_times() -> None:
    waiting = [w(1, "b"), w(2), w(3), w(4)]
    assert admit(waiting, [Running(0, 0)], max_batch=8, max_jumps=2) == Admission((2, 3), (), 2)
    # the jumps carry over: at the bound, the oldest is next and the batch drains for it
    assert admit(waiting, [Running(0, 0)], jumps=2, max_batch=8, max_jumps=2) == Admission(
        (), (), 2)
    assert admit(waiting, [], jumps=2, max_batch=8, max_jumps=2) == Admission((1,), (), 0)
    # a full batch stops the jumping job, and its jump is not counted
    assert admit(waiting, [Running(0, 0)], max_batch=1, max_jumps=2) == Admission((), (), 0)
    # with nothing running the jumps still come first: the swap waits for them
    assert admit(waiting, [], max_batch=8, max_jumps=4) == Admission((2, 3, 4), (), 3)


def test_one_off_calls_take_no_slot() -> None:
    waiting = [w(1, generates=False), w(2), w(3, generates=False)]
    assert admit(waiting, [Running(0, 3)], max_batch=1) == Admission((1,), (), 0)
    assert admit(waiting, [Running(0, 3)], max_batch=2) == Admission((1, 2, 3), (), 0)
    # one for another model (a load) still waits for the drain, and then loads it
    load = [w(1, "b", generates=False), w(2, "b")]
    assert admit(load, [Running(0, 0)], max_batch=4) == Admission((), (), 0)
    assert admit(load, [], max_batch=4) == Admission((1, 2), (), 0)
    # a one-off for another model ends at once: what follows may still swap in the same call
    assert admit([w(1, generates=False), w(2, "b")], [], max_batch=4) == Admission((1, 2), (), 0)


def test_a_job_for_no_model_runs_only_on_an_empty_batch_and_loads_nothing() -> None:
    unload = w(1, None, generates=False)
    assert admit([unload, w(2)], [Running(0, 0)], max_batch=4) == Admission((), (), 0)
    # nothing runs: the unload runs, and "a" is still the model the next job joins
    assert admit([unload, w(2)], [], max_batch=4) == Admission((1, 2), (), 0)
    # so a job for "a" still jumps the one for "b", which then waits for the drain
    assert admit([unload, w(2, "b"), w(3)], [], max_batch=4) == Admission((1, 3), (), 1)


def test_expiry_is_strictly_past_the_timeout() -> None:
    waiting = [w(1, since=0.0), w(2, since=1.0), w(3, since=2.0)]
    assert admit(waiting, [], now=11.0, queue_timeout=10.0, max_batch=8) == Admission(
        (2, 3), (1,), 0)
    assert admit(waiting, [], now=10.0, queue_timeout=10.0, max_batch=8) == Admission(
        (1, 2, 3), (), 0)
    later = math.nextafter(10.0, math.inf)
    assert admit(waiting, [], now=later, queue_timeout=10.0, max_batch=8) == Admission(
        (2, 3), (1,), 0)
    # an expired job is never picked, nor does it block: the others move up
    blocked = [w(1, "b", since=0.0), w(2, since=5.0)]
    assert admit(blocked, [Running(0, 0)], now=11.0, queue_timeout=10.0, max_batch=2) == (
        Admission((2,), (1,), 0))


def test_prefill_is_first_come_first_served_within_the_budget() -> None:
    rows = [Running(1, 0), Running(2, 100), Running(3, 30), Running(4, 0), Running(5, 50)]
    assert plan_prefill(rows, 128) == ((2, 100), (3, 28))
    assert plan_prefill(rows, 130) == ((2, 100), (3, 30))
    assert plan_prefill(rows, 500) == ((2, 100), (3, 30), (5, 50))
    assert plan_prefill(rows, 1) == ((2, 1),)
    assert plan_prefill([Running(1, 0)], 64) == ()
    assert plan_prefill([], 64) == ()
    with pytest.raises(ValueError):
        plan_prefill(rows, 0)


@given(st.lists(st.integers(0, 50), max_size=10), st.integers(1, 300))
def test_a_prefill_plan_fills_the_budget_oldest_first(needs: list[int], budget: int) -> None:
    rows = [Running(index, need) for index, need in enumerate(needs)]
    plan = plan_prefill(rows, budget)
    assert sum(tokens for _, tokens in plan) == min(budget, sum(needs))
    assert all(0 < tokens <= needs[row] for row, tokens in plan)
    prefilling = [row.id for row in rows if row.to_prefill]
    assert [row for row, _ in plan] == prefilling[:len(plan)]  # a prefix, in admission order
    assert all(tokens == needs[row] for row, tokens in plan[:-1])  # only the last one partly


# -- simulation ----------------------------------------------------------------------------------

NAMES = ("a", "b", "c")


@attrs.frozen
class Job:
    id: int
    model: str | None
    arrives: float  # when it is queued; for a follow-up, the delay after `after` ended
    prompt: int = 1  # prompt tokens (a generating job)
    length: int = 1  # tokens it generates
    generates: bool = True
    after: int | None = None  # a client's next request: queued once this job ended

    @property
    def work(self) -> int:
        """Prefill tokens plus decode tokens: each step with rows running does one at least."""
        return self.prompt + self.length if self.generates else 0


@attrs.define
class Row:
    job: Job
    to_prefill: int
    generated: int = 0

    @property
    def work(self) -> int:
        return self.to_prefill + self.job.length - self.generated


@attrs.frozen
class Step:
    now: float
    loaded: str | None  # before the admission
    waiting: tuple[Waiting, ...]
    running: tuple[Running, ...]  # before the admission
    running_work: tuple[int, ...]
    admission: Admission
    batch: int  # rows after the admission
    prefill: tuple[tuple[int, int], ...]
    decoding: tuple[int, ...]  # rows that decoded at the start of the step (to_prefill 0)
    tokens: tuple[int, ...]  # rows that made a token this step


@attrs.define
class Trace:
    policy: BatchPolicy
    jobs: dict[int, Job]
    steps: list[Step] = attrs.Factory(list)
    queued: list[int] = attrs.Factory(list)  # ids in arrival order
    since: dict[int, float] = attrs.Factory(dict)
    started: dict[int, int] = attrs.Factory(dict)  # id: step index
    start_order: list[int] = attrs.Factory(list)
    expired: dict[int, int] = attrs.Factory(dict)
    prefilled: dict[int, int] = attrs.Factory(dict)  # step of its first token
    finished: dict[int, int] = attrs.Factory(dict)
    swaps: list[tuple[int, int, str]] = attrs.Factory(list)  # (step, job id, model)
    token_steps: dict[int, list[int]] = attrs.Factory(dict)


def simulate(jobs: Sequence[Job], policy: BatchPolicy, loaded: str | None = None) -> Trace:
    """Drive the policy one call per step until every job has ended (finished or expired). Each
    step: queue the arrivals, admit, start (generating jobs become rows, one-off calls end at
    once, a start for another model is a swap), then one decode for every row that decodes and
    the planned prefill; a row whose prefill ends makes its first token, and it ends at its
    length."""
    trace = Trace(policy, {job.id: job for job in jobs})
    pending = list(jobs)
    waiting: list[Waiting] = []
    running: list[Row] = []
    ended: dict[int, int] = {}
    jumps = 0
    # each step either runs rows (one unit of work at least), starts or expires a waiting job,
    # or waits for an arrival: a finite bound
    cap = int(sum(job.arrives + job.work + 2 for job in jobs)) + 2
    index = 0
    while pending or waiting or running:
        assert index <= cap, "the simulation did not end"
        now = float(index)
        for job in list(pending):
            since = job.arrives if job.after is None else (
                ended[job.after] + 1 + job.arrives if job.after in ended else math.inf)
            if since <= now:
                pending.remove(job)
                waiting.append(Waiting(job.id, job.model, since, job.generates))
                trace.queued.append(job.id)
                trace.since[job.id] = since
        seen = tuple(waiting)
        before = tuple(Running(row.job.id, row.to_prefill) for row in running)
        work = tuple(row.work for row in running)
        admission = plan_admission(seen, before, loaded, jumps, policy, now)
        jumps = admission.jumps
        for id in admission.expire:
            trace.expired[id] = index
            ended[id] = index
        step_loaded = loaded
        for id in admission.start:
            job = trace.jobs[id]
            trace.started[id] = index
            trace.start_order.append(id)
            if job.model is not None and job.model != loaded:
                trace.swaps.append((index, id, job.model))
                loaded = job.model
            if job.generates:
                running.append(Row(job, job.prompt))
            else:
                trace.finished[id] = ended[id] = index
        gone = set(admission.start) | set(admission.expire)
        waiting = [job for job in waiting if job.id not in gone]
        batch = len(running)
        prefill = plan_prefill([Running(row.job.id, row.to_prefill) for row in running],
                               policy.prefill_budget)
        decoding = tuple(row.job.id for row in running if not row.to_prefill)
        tokens = list(decoding)
        rows = {row.job.id: row for row in running}
        for row in running:
            if not row.to_prefill:
                row.generated += 1
        for id, granted in prefill:
            rows[id].to_prefill -= granted
            if not rows[id].to_prefill:
                rows[id].generated += 1  # the last chunk gives the first token
                trace.prefilled[id] = index
                tokens.append(id)
        for id in tokens:
            trace.token_steps.setdefault(id, []).append(index)
        for row in [row for row in running if row.generated == row.job.length]:
            running.remove(row)
            trace.finished[row.job.id] = ended[row.job.id] = index
        trace.steps.append(Step(now, step_loaded, seen, before, work, admission, batch, prefill,
                                decoding, tuple(tokens)))
        index += 1
    assert set(trace.finished) | set(trace.expired) == set(trace.jobs)
    assert not set(trace.finished) & set(trace.expired)
    return trace


def replay(trace: Trace, visit: Callable[[Step, list[Waiting], Waiting, int, str | None], None]
           ) -> None:
    """Walk each admission start by start: `visit(step, rest, started, position, loaded)` with
    the waiting jobs still there just before that start (expired ones removed), oldest first."""
    for step in trace.steps:
        rest = [w for w in step.waiting if w.id not in step.admission.expire]
        loaded = step.loaded
        for position, id in enumerate(step.admission.start):
            started = next(w for w in rest if w.id == id)
            visit(step, rest, started, position, loaded)
            rest.remove(started)
            if started.model is not None:
                loaded = started.model


job_specs = st.tuples(st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 5.0]),  # gap after the last
                      st.integers(0, 2),  # model
                      st.integers(1, 60),  # prompt tokens
                      st.integers(1, 12),  # tokens to generate
                      st.sampled_from(["gen", "gen", "gen", "gen", "call", "unload"]))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Job], BatchPolicy, str | None]:
    names = NAMES[:draw(st.integers(2, 3))]
    jobs: list[Job] = []
    clock = 0.0
    for id, (gap, model, prompt, length, kind) in enumerate(draw(st.lists(job_specs,
                                                                          max_size=25))):
        clock += gap
        jobs.append(Job(id, None if kind == "unload" else names[model % len(names)], clock,
                        prompt, length, generates=kind == "gen"))
    policy = BatchPolicy(max_batch=draw(st.integers(1, 8)),
                         prefill_budget=draw(st.one_of(st.integers(1, 8), st.integers(1, 300))),
                         max_jumps=draw(st.integers(0, 4)),
                         queue_timeout=draw(st.sampled_from([0.5, 1.0, 3.0, 10.0, 1e9])))
    return jobs, policy, draw(st.sampled_from([None, *names]))


simulations = settings(max_examples=200, deadline=None)


def run(scenario: tuple[list[Job], BatchPolicy, str | None]) -> Trace:
    return simulate(*scenario)


@simulations
@given(scenarios())
def test_1_the_batch_never_exceeds_max_batch(scenario: tuple[list[Job], BatchPolicy, str | None]
                                             ) -> None:
    trace = run(scenario)
    assert all(step.batch <= trace.policy.max_batch for step in trace.steps)


@simulations
@given(scenarios())
def test_2_one_model_starts_in_arrival_order_and_prefills_in_admission_order(
        scenario: tuple[list[Job], BatchPolicy, str | None]) -> None:
    trace = run(scenario)
    arrival = {id: order for order, id in enumerate(trace.queued)}
    for model in {job.model for job in trace.jobs.values()}:
        starts = [arrival[id] for id in trace.start_order if trace.jobs[id].model == model]
        assert starts == sorted(starts)

    def overtakes_only_by_the_loaded_model(step: Step, rest: list[Waiting], started: Waiting,
                                           position: int, loaded: str | None) -> None:
        older = rest[:rest.index(started)]
        assert all(w.model != started.model for w in older)  # never past its own model
        if older:  # past other models' jobs: only as a job for the loaded model
            assert started.model == loaded

    replay(trace, overtakes_only_by_the_loaded_model)
    rows = [id for id in trace.start_order if trace.jobs[id].generates]
    done = [trace.prefilled[id] for id in rows]
    assert done == sorted(done)


@simulations
@given(scenarios())
def test_3_prefill_per_step_stays_within_the_budget(
        scenario: tuple[list[Job], BatchPolicy, str | None]) -> None:
    trace = run(scenario)
    for step in trace.steps:
        assert sum(tokens for _, tokens in step.prefill) <= trace.policy.prefill_budget
        assert all(tokens > 0 for _, tokens in step.prefill)


@simulations
@given(scenarios())
def test_4_prefill_never_takes_a_decoding_rows_step(
        scenario: tuple[list[Job], BatchPolicy, str | None]) -> None:
    trace = run(scenario)
    for step in trace.steps:
        assert not {id for id, _ in step.prefill} & set(step.decoding)
        assert set(step.decoding) <= set(step.tokens)
    # so a row, once it has its first token, makes one token every step until its length
    for id, steps in trace.token_steps.items():
        assert steps == list(range(trace.prefilled[id], trace.prefilled[id] + len(steps)))
        assert len(steps) == trace.jobs[id].length
        assert trace.finished[id] == steps[-1]


@simulations
@given(scenarios())
def test_5_swaps_happen_on_an_empty_batch_to_the_oldest_jobs_model(
        scenario: tuple[list[Job], BatchPolicy, str | None]) -> None:
    trace = run(scenario)
    swaps: list[tuple[int, int, str]] = []
    passed: dict[int, int] = {}  # id: starts that went past it while it was the oldest

    def check(step: Step, rest: list[Waiting], started: Waiting, position: int,
              loaded: str | None) -> None:
        if started is not rest[0]:
            passed[rest[0].id] = passed.get(rest[0].id, 0) + 1
        if started.model is None or started.model == loaded:
            return
        index = trace.steps.index(step)
        swaps.append((index, started.id, started.model))
        earlier = step.admission.start[:position]
        assert not step.running and not any(trace.jobs[id].generates for id in earlier)
        assert started is rest[0]  # the oldest waiting job's model
        assert passed.get(started.id, 0) <= trace.policy.max_jumps

    replay(trace, check)
    assert swaps == trace.swaps
    assert all(count <= trace.policy.max_jumps for count in passed.values())


@simulations
@given(scenarios())
def test_6_no_job_starves(scenario: tuple[list[Job], BatchPolicy, str | None]) -> None:
    """Once a job is the oldest waiting, at most max_jumps jobs start before it, and it starts
    within as many steps as the work left to the rows then running plus that of the jumpers:
    each step that does not start it runs some row, which does one unit of work at least."""
    trace = run(scenario)  # it ends: every job finished or expired
    oldest: dict[int, tuple[int, int]] = {}  # id: (step it became the oldest, work left then)
    jumpers: dict[int, list[int]] = {}
    for index, step in enumerate(trace.steps):
        rest = [w for w in step.waiting if w.id not in step.admission.expire]
        work = sum(step.running_work)
        for id in step.admission.start:
            head = rest[0]
            oldest.setdefault(head.id, (index, work))
            if head.id != id:
                jumpers.setdefault(head.id, []).append(id)
            rest = [w for w in rest if w.id != id]
            work += trace.jobs[id].work
        if rest:
            oldest.setdefault(rest[0].id, (index, work))
    for id, (since, work) in oldest.items():
        if id in trace.expired:
            continue
        passed = jumpers.get(id, [])
        assert len(passed) <= trace.policy.max_jumps
        bound = work + sum(trace.jobs[other].work for other in passed)
        assert trace.started[id] - since <= bound
    assert set(trace.started) | set(trace.expired) == set(trace.jobs)


@simulations
@given(st.integers(1, 8), st.integers(0, 4), st.integers(1, 300),
       st.lists(st.tuples(st.integers(1, 40), st.integers(1, 10), st.sampled_from([0, 0, 1, 3])),
                min_size=2, max_size=16))
def test_7_two_clients_on_two_models_both_progress(
        max_batch: int, max_jumps: int, budget: int, requests: list[tuple[int, int, int]]) -> None:
    """Each client sends its next request once the last one ended (after a think time); their
    requests alternate in the simulation's list, one client on "a", the other on "b"."""
    jobs = [Job(id, "ab"[id % 2], think, prompt, length,
                after=id - 2 if id >= 2 else None)
            for id, (prompt, length, think) in enumerate(requests)]
    policy = BatchPolicy(max_batch=max_batch, prefill_budget=budget, max_jumps=max_jumps,
                         queue_timeout=1e9)
    trace = simulate(jobs, policy, loaded="a")
    assert set(trace.finished) == {job.id for job in jobs}  # both got everything done
    # while one client waits, the other starts at most its older request plus max_jumps
    for job in jobs:
        others = [id for id in trace.start_order
                  if trace.jobs[id].model != job.model
                  and trace.since[job.id] <= trace.steps[trace.started[id]].now
                  and trace.start_order.index(id) < trace.start_order.index(job.id)]
        assert len(others) <= 1 + max_jumps


@simulations
@given(scenarios())
def test_8_a_job_expires_exactly_once_it_waited_past_the_timeout(
        scenario: tuple[list[Job], BatchPolicy, str | None]) -> None:
    trace = run(scenario)
    timeout = trace.policy.queue_timeout
    for step in trace.steps:
        assert set(step.admission.expire) == {
            w.id for w in step.waiting if step.now - w.since > timeout}
        assert all(step.now - trace.since[id] <= timeout for id in step.admission.start)


@given(st.floats(0, 1e6), st.floats(0.001, 1e4))
def test_8_expiry_at_the_boundary(since: float, timeout: float) -> None:
    policy = BatchPolicy(max_batch=2, queue_timeout=timeout)
    job = [Waiting(1, "a", since)]
    now = since + timeout
    expected = now - since > timeout  # float rounding may put `now` a hair either side
    assert plan_admission(job, [], "a", 0, policy, now).expire == ((1,) if expected else ())
    later = math.nextafter(now, math.inf)
    while later - since <= timeout:
        later = math.nextafter(later, math.inf)
    assert plan_admission(job, [], "a", 0, policy, later).expire == (1,)
    earlier = math.nextafter(now, -math.inf)
    while earlier - since > timeout:
        earlier = math.nextafter(earlier, -math.inf)
    assert plan_admission(job, [], "a", 0, policy, earlier).start == (1,)


def test_the_simulation_swaps_back_and_forth_as_next_job_says() -> None:
    """The worked example of test_scheduling's drain, as a batch of one on the simulation."""
    models = ["b", "a", "a", "a", "b"]
    jobs = [Job(id, model, 0.0) for id, model in enumerate(models)]
    trace = simulate(jobs, BatchPolicy(max_batch=1, max_jumps=2), loaded="a")
    assert trace.start_order == [1, 2, 0, 4, 3]
    assert next_job(models, "a", 0, 2) == 1
    assert [model for _, _, model in trace.swaps] == ["b", "a"]
