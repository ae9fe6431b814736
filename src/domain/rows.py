"""One request's row driven through the engine's step API on its own: the definition of
"alone" that a batch must reproduce, and the simple path for tools and benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Generator

from .completion import GenerationStep
from .conversation import SamplingParams
from .ports import InferenceEngine, PreparedPrompt


def generate_alone(engine: InferenceEngine, prompt: PreparedPrompt, params: SamplingParams,
                   cancelled: Callable[[], bool] = lambda: False, *,
                   chunk: int | None = None) -> Generator[GenerationStep, None, None]:
    """Admit one row, step the engine until the row finishes, release it. Yields one step per
    generated token. `cancelled()` is asked before every step (the iterator then ends early and
    nothing is kept); closing the iterator early (a stop sequence) keeps the row's KV state, as
    a finished row's is. A row's error is raised."""
    row = engine.admit(prompt, params)
    keep = failed = False
    try:
        prefill = {row: chunk or engine.prefill_chunk}
        while not cancelled():
            report = engine.step(prefill)
            progress = next((p for p in report.rows if p.row == row), None)
            if progress is None:
                continue
            if progress.error is not None:
                failed = True
                raise progress.error
            if progress.step is None:
                continue
            prefill = {}
            yield progress.step
            if progress.step.finish_reason is not None:
                keep = True
                return
    finally:
        if not failed:
            engine.release(row, keep=keep or not cancelled())
