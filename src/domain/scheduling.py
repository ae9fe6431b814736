"""Which waiting request runs next: arrival order, bent a little to avoid needless swaps; and, for
continuous batching, which waiting requests join the running batch and how the prompt tokens of
one step are shared among the joiners (docs/batching.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs


def next_job(models: Sequence[str | None], loaded: str | None, jumps: int, max_jumps: int) -> int:
    """Index of the job to serve next among `models` (the model each waiting job needs, oldest
    first; None for a job that needs no particular model).

    Arrival order, except that a job for the loaded model may go before older jobs for other
    models, at most `max_jumps` times in a row: two clients on two models then do not swap on
    every request, and the oldest job still waits at most `max_jumps` extra turns.
    """
    if not models:
        raise ValueError("no job is waiting")
    if jumps >= max_jumps or models[0] is None or models[0] == loaded:
        return 0
    return next((index for index, model in enumerate(models) if model == loaded), 0)


@attrs.frozen
class Waiting:
    """A queued job, as the admission policy sees it."""

    id: int
    model: str | None  # the model it needs; None: needs no particular model (an idle unload)
    since: float  # when it was queued (monotonic seconds)
    generates: bool = True  # False: a one-off call (count tokens, a load) between steps, no slot


@attrs.frozen
class Running:
    """A row of the batch (for the loaded model), as the policy sees it."""

    id: int
    to_prefill: int  # prompt tokens it still has to prefill; 0 once it decodes


@attrs.frozen
class BatchPolicy:
    """max_batch: rows prefilling or decoding at once. prefill_budget: prompt tokens prefilled per
    step, all joiners together. max_jumps: as next_job's. queue_timeout: seconds a job may wait
    before it is answered 503 instead."""

    max_batch: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    prefill_budget: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    max_jumps: int = attrs.field(default=4, validator=attrs.validators.ge(0))
    queue_timeout: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))


@attrs.frozen
class Admission:
    start: tuple[int, ...]  # waiting ids to start now, in this order
    expire: tuple[int, ...]  # waited longer than queue_timeout: answered 503, never started
    jumps: int  # carried into the next call


def plan_admission(waiting: Sequence[Waiting], running: Sequence[Running], loaded: str | None,
                   jumps: int, policy: BatchPolicy, now: float) -> Admission:
    """Which waiting jobs start now (`waiting` oldest first; `running` the batch's rows, all for
    `loaded`, in admission order).

    Jobs that waited more than `queue_timeout` expire. The rest are picked one by one with
    `next_job`: a job for the loaded model joins while a slot is free (a job that does not
    generate needs no slot); a job for another model, or for none, starts only once nothing runs
    (the batch drains, then the swap happens), and a job for another model makes it the loaded
    one. The first pick that cannot start ends admission for this call: nothing passes it
    beyond what `next_job` allows.
    """
    expire = tuple(w.id for w in waiting if now - w.since > policy.queue_timeout)
    expired = set(expire)
    rest = [w for w in waiting if w.id not in expired]
    busy = len(running)  # rows running, with the generating jobs started by this call
    start: list[int] = []
    while rest:
        index = next_job([w.model for w in rest], loaded, jumps, policy.max_jumps)
        pick = rest[index]
        if pick.model is None or pick.model != loaded:
            if busy:
                break  # the batch drains first
            if pick.model is not None:
                loaded = pick.model  # this start loads it
        elif pick.generates and busy >= policy.max_batch:
            break  # no free slot
        del rest[index]
        start.append(pick.id)
        if pick.generates:
            busy += 1
        jumps = jumps + 1 if index else 0
    return Admission(tuple(start), expire, jumps)


def plan_prefill(running: Sequence[Running], budget: int) -> tuple[tuple[int, int], ...]:
    """Prompt tokens each joining row prefills this step, as (row id, tokens): the oldest joiner
    first, each taking what it still needs until `budget` is spent. Decoding rows get nothing
    here: they decode every step whatever the joiners prefill."""
    if budget < 1:
        raise ValueError(f"the prefill budget must be at least 1, not {budget}")
    plan: list[tuple[int, int]] = []
    for row in running:
        if budget == 0:
            break
        if row.to_prefill > 0:
            tokens = min(row.to_prefill, budget)
            plan.append((row.id, tokens))
            budget -= tokens
    return tuple(plan)
