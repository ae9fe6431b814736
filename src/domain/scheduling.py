"""Which waiting request runs next: arrival order, bent a little to avoid needless swaps."""

from __future__ import annotations

from collections.abc import Sequence


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
