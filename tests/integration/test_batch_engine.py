"""The MLX engine's rows (admit/step/release), real MLX on tiny models: a row decoding in a batch
gives the tokens it gives alone (generate_alone: B=1 of the same code), whatever joins, leaves or
prefills beside it; per-row sampling, processors and logprobs; failures confined to their row or,
for the batched step, EngineUnavailable and a working engine after it; the prefix cache in and
out of rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from mlx_server.adapters.mlx.engine import MlxEngine, _Payload
from mlx_server.domain.completion import FinishReason, GenerationStep
from mlx_server.domain.conversation import (
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    SamplingParams,
    TextPart,
)
from mlx_server.domain.errors import EngineFailure, EngineUnavailable
from mlx_server.domain.families import GEMMA3, GENERIC, QWEN3_VL
from mlx_server.domain.models import ModelRef
from mlx_server.domain.ports import LoadedImage, PreparedPrompt, PromptInput
from mlx_server.domain.rows import generate_alone

pytestmark = pytest.mark.slow

# A first differing token is accepted only where the alone run's top-2 log-probability gap at that
# step is below float noise: two logits this close may swap between a B=1 and a B>1 matmul.
# Logits are float32 (1e-4 covers a few ulps of a |logit| ~ 30 sum) or bf16 (2e-2).
GAP_FLOAT32, GAP_BF16 = 1e-4, 2e-2
GREEDY = SamplingParams(temperature=0.0)


@attrs.frozen
class Request:
    text: str
    max_tokens: int
    image: tuple[int, int] | None = None  # size of a solid image, for the vision models
    colour: tuple[int, int, int] = (200, 30, 30)


@pytest.fixture(scope="module")
def engines(smollm_dir: Path, tiny_gemma3: Path, tiny_qwen3_vl: Path) -> Iterator[dict[str, MlxEngine]]:
    refs = {"smollm": ModelRef("smollm", str(smollm_dir), GENERIC.name, 8192),
            "gemma3": ModelRef("tiny-gemma3", str(tiny_gemma3), GEMMA3.name, 4096, vision=True),
            "qwen3": ModelRef("tiny-qwen3-vl", str(tiny_qwen3_vl), QWEN3_VL.name, 4096, vision=True)}
    loaded: dict[str, MlxEngine] = {}

    class Lazy(dict[str, MlxEngine]):
        def __missing__(self, name: str) -> MlxEngine:
            engine = MlxEngine()
            engine.load(refs[name])
            loaded[name] = engine
            return engine

    yield Lazy()
    for engine in loaded.values():
        engine.unload()


def image(size: tuple[int, int], colour: tuple[int, int, int]) -> LoadedImage:
    from PIL import Image

    return LoadedImage(key=f"{size}{colour}", image=Image.new("RGB", size, colour))


def prompt_input(turns: Sequence[Request | str]) -> PromptInput:
    """User requests, each (but the last) followed by the assistant reply given as a string."""
    messages, images = [], []
    for turn in turns:
        if isinstance(turn, str):
            messages.append(Message(Role.ASSISTANT, (TextPart(turn),)))
            continue
        parts: tuple[Any, ...] = (TextPart(turn.text),)
        if turn.image is not None:
            parts = (*parts, ImagePart("image"))
            images.append(image(turn.image, turn.colour))
        messages.append(Message(Role.USER, parts))
    return PromptInput(tuple(messages), images=tuple(images))


def prepare(engine: MlxEngine, *turns: Request | str) -> PreparedPrompt:
    return engine.prepare(prompt_input(turns))


def uncached(prompt: PreparedPrompt) -> PreparedPrompt:
    """The same prompt with no prefix-cache plan: prefilled whole."""
    return attrs.evolve(prompt, payload=_Payload(prompt.payload, None), cached_tokens=0)  # type: ignore[arg-type]


def alone(engine: MlxEngine, prompt: PreparedPrompt, params: SamplingParams) -> list[GenerationStep]:
    """The reference: the row alone; with top-2 logprobs, for the gap at a first difference."""
    return list(generate_alone(engine, prompt, attrs.evolve(params, logprobs=True, top_logprobs=2)))


def gap_limit(engine: MlxEngine) -> float:
    import mlx.core as mx

    dtype = engine._model.language_model.model.embed_tokens.weight.dtype
    return GAP_FLOAT32 if dtype == mx.float32 else GAP_BF16


def assert_same_tokens(reference: list[GenerationStep], batched: list[GenerationStep], limit: float,
                       label: str) -> None:
    """Token for token (batched may be a prefix: the row was cancelled); a first difference only
    where the alone run's top-2 gap is below `limit`, and nothing is compared past it."""
    tokens = [s.token for s in batched]
    expected = [s.token for s in reference][:len(tokens)]
    for i, (got, want) in enumerate(zip(tokens, expected, strict=True)):
        if got != want:
            logprob = reference[i].logprob
            assert logprob is not None and len(logprob.top) == 2
            top = logprob.top
            gap = abs(top[0].logprob - top[1].logprob)
            print(f"{label}: token {i} differs ({got} vs {want}), alone top-2 gap {gap:.3g}")
            assert gap < limit, (f"{label}: token {i} differs ({got} batched, {want} alone) and the "
                                 f"alone top-2 gap {gap:.3g} is not float noise (< {limit})")
            return
        # the same token: its log-probability too (a wrong position or cache shows here first)
        got_lp, want_lp = batched[i].logprob, reference[i].logprob
        if got_lp is not None and want_lp is not None:
            assert abs(got_lp.logprob - want_lp.logprob) < limit, (label, i, got_lp, want_lp)
    assert len(tokens) == len(expected), label


@attrs.define
class Script:
    """Rows joining at given steps, one cancelled at a step, prefill granted per step."""

    prompts: list[PreparedPrompt]
    params: list[SamplingParams]
    joins: list[int]  # the step at which each row is admitted
    grant: int  # prompt tokens per joining row per step
    cancel: dict[int, int] = attrs.Factory(dict)  # row index -> step
    on_admit: Callable[[int, int], None] | None = None  # (index, row id)

    def run(self, engine: MlxEngine) -> tuple[list[list[GenerationStep]], list[Any]]:
        steps: list[list[GenerationStep]] = [[] for _ in self.prompts]
        errors: list[Any] = [None] * len(self.prompts)
        ids: dict[int, int] = {}  # row id -> index
        active: dict[int, bool] = {}  # index -> still prefilling
        tick = 0
        while active or tick <= max(self.joins):
            for index, at in enumerate(self.joins):
                if at == tick:
                    row = engine.admit(self.prompts[index], self.params[index])
                    ids[row] = index
                    active[index] = True
                    if self.on_admit:
                        self.on_admit(index, row)
            for index, at in self.cancel.items():
                if at == tick and index in active:
                    engine.release(next(r for r, i in ids.items() if i == index), keep=False)
                    del active[index]
            prefill = {row: self.grant for row, index in ids.items() if active.get(index)}
            report = engine.step(prefill)
            for progress in report.rows:
                index = ids[progress.row]
                if progress.error is not None:
                    errors[index] = progress.error
                    active.pop(index, None)
                    continue
                if progress.step is None:
                    continue
                active[index] = False
                steps[index].append(progress.step)
                if progress.step.finish_reason is not None:
                    engine.release(progress.row, keep=True)
                    del active[index]
            tick += 1
            assert tick < 500, "the script does not end"
        return steps, errors


def requests_for(model: str) -> list[Request]:
    vision = model != "smollm"
    long = "Here is a list of things to remember: " + ", ".join(
        f"item {i} is a {word}" for i, word in enumerate(["cat", "dog", "tree", "cloud", "boat",
                                                          "lamp", "river", "stone", "bird"]))
    most = 16 if vision else 10  # SmolLM2 on a CPU: ~0.1-0.7 s a step
    return [
        Request("Hi.", min(12, most)),
        Request(long + " What was item 3?", most),
        Request("Describe this picture in a few words." if vision else "Name three colours.", 10,
                (64, 64) if vision else None),
        Request("What colour is it?" if vision else "Count to five.", 3,
                (96, 160) if vision else None, (20, 30, 200)),  # leaves early
        Request("Tell me a story about a fox.", most),  # cancelled mid-way (step 7)
    ]


@pytest.mark.parametrize("model", ["smollm", "gemma3", "qwen3"])
def test_greedy_rows_in_a_batch_give_the_tokens_they_give_alone(engines: dict[str, MlxEngine],
                                                                 model: str) -> None:
    engine = engines[model]
    requests = requests_for(model)
    prompts = [prepare(engine, r) for r in requests]
    params = [attrs.evolve(GREEDY, max_tokens=r.max_tokens, logprobs=True) for r in requests]
    references = [alone(engine, p, q) for p, q in zip(prompts, params, strict=True)]
    # the next turn of the first conversation: its prefix comes from the cache
    follow = prepare(engine, requests[0], "".join(s.text for s in references[0]),
                     Request("And then?", 8))
    assert follow.cached_tokens > 0
    prompts.append(follow)
    params.append(attrs.evolve(GREEDY, max_tokens=8, logprobs=True))
    references.append(alone(engine, follow, params[-1]))

    script = Script(prompts, params, joins=[0, 0, 2, 3, 1, 5], grant=8, cancel={4: 7})
    batched, errors = script.run(engine)
    assert errors == [None] * len(prompts)
    limit = gap_limit(engine)
    for index, (reference, got) in enumerate(zip(references, batched, strict=True)):
        assert got, f"row {index} produced nothing"
        assert_same_tokens(reference, got, limit, f"{model} row {index}")
    assert batched[3][-1].finish_reason is FinishReason.LENGTH and len(batched[3]) == 3
    assert len(batched[4]) < len(references[4])  # cancelled before its end
    # the text streamed per step is the alone run's text
    for index in (0, 1, 2, 3, 5):
        if [s.token for s in batched[index]] == [s.token for s in references[index]]:
            assert "".join(s.text for s in batched[index]) == "".join(s.text for s in references[index])


def test_a_seed_draws_the_same_tokens_alone_and_beside_any_neighbours(
        engines: dict[str, MlxEngine]) -> None:
    engine = engines["qwen3"]  # tiny: fast
    prompt = prepare(engine, Request("Write a short poem about the sea.", 0))
    seeded = SamplingParams(temperature=0.9, seed=1234, max_tokens=8)
    reference = [s.token for s in generate_alone(engine, prompt, seeded)]
    others = [prepare(engine, Request(text, 0)) for text in ("Hi.", "Name a fruit.", "Why is the sky blue?")]
    for neighbours, joins in (([0.7, 0.0, 1.0], [0, 0, 0, 0]), ([1.2, 0.5, 0.0], [2, 0, 1, 3])):
        params = [seeded] + [SamplingParams(temperature=t, seed=7 + i, max_tokens=3 + 2 * i)
                             for i, t in enumerate(neighbours)]
        batched, errors = Script([prompt, *others], params, joins=joins, grant=16).run(engine)
        assert errors == [None] * 4
        assert [s.token for s in batched[0]] == reference
    other = [s.token for s in generate_alone(engine, prompt, attrs.evolve(seeded, seed=99))]
    assert other != reference


def test_per_row_parameters_in_one_batch_each_equal_their_run_alone(
        engines: dict[str, MlxEngine]) -> None:
    engine = engines["smollm"]
    prompt = prepare(engine, Request("Give me a random word.", 0))
    json_prompt = prepare(engine, Request("Is the sky blue? Answer in JSON.", 0))
    schema = {"type": "object", "properties": {"answer": {"type": "boolean"}},
              "required": ["answer"], "additionalProperties": False}
    tokenizer = getattr(engine._processor, "tokenizer", engine._processor)
    biased = tokenizer.encode(" banana", add_special_tokens=False)[0]
    params = [
        SamplingParams(temperature=0.0, max_tokens=6),
        SamplingParams(temperature=1.0, seed=3, max_tokens=6),
        SamplingParams(temperature=1.0, seed=4, top_p=0.9, top_k=40, min_p=0.05, max_tokens=6),
        SamplingParams(temperature=0.0, logit_bias={biased: 30.0}, max_tokens=3),
        SamplingParams(temperature=0.0, max_tokens=16, response_format=ResponseFormat(schema)),
        SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3, max_tokens=5),
        SamplingParams(temperature=0.8, seed=5, repetition_penalty=1.3, presence_penalty=0.5,
                       frequency_penalty=0.5, max_tokens=6),
    ]
    prompts = [json_prompt if p.response_format else prompt for p in params]
    references = [list(generate_alone(engine, pr, pa)) for pr, pa in zip(prompts, params, strict=True)]
    batched, errors = Script(prompts, params, joins=[0, 1, 0, 2, 0, 3, 1], grant=8).run(engine)
    assert errors == [None] * len(params)
    for index, (reference, got) in enumerate(zip(references, batched, strict=True)):
        assert [s.token for s in got] == [s.token for s in reference], f"row {index}"
    assert batched[3][0].token == biased
    assert json.loads("".join(s.text for s in batched[4])) in ({"answer": True}, {"answer": False})
    for got, want in zip(batched[5], references[5], strict=True):
        assert got.logprob is not None and want.logprob is not None
        assert got.logprob.logprob == pytest.approx(want.logprob.logprob, abs=1e-4)
        assert [t.token for t in got.logprob.top] == [t.token for t in want.logprob.top]
    assert all(s.logprob is None for s in batched[0])


def test_a_row_failure_is_that_rows_alone(engines: dict[str, MlxEngine]) -> None:
    engine = engines["qwen3"]  # tiny: fast
    prompts = [prepare(engine, Request(t, 0)) for t in ("Hi.", "Name a fruit.", "Count to three.")]
    params = [attrs.evolve(GREEDY, max_tokens=6)] * 3
    references = [[s.token for s in generate_alone(engine, p, q)]
                  for p, q in zip(prompts, params, strict=True)]
    calls = []

    def failing(tokens: Any, logits: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a processor broke")
        return logits

    def sabotage(index: int, row: int) -> None:
        if index == 1:
            engine._batcher.rows[row].processors.append(failing)  # type: ignore[union-attr]

    batched, errors = Script(prompts, params, joins=[0, 0, 1], grant=16, on_admit=sabotage).run(engine)
    assert isinstance(errors[1], EngineFailure) and errors[0] is None and errors[2] is None
    assert len(batched[1]) == 2  # its first two tokens, then the failure
    for index in (0, 2):
        assert [s.token for s in batched[index]] == references[index]
    assert engine._batcher.rows == {}  # type: ignore[union-attr]


def test_a_failed_batched_step_is_engine_unavailable_and_the_engine_goes_on(
        engines: dict[str, MlxEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_server.adapters.mlx.batch import Batcher

    engine = engines["qwen3"]  # tiny: fast
    prompts = [prepare(engine, Request(t, 0)) for t in ("Hi.", "Name a fruit.")]
    params = attrs.evolve(GREEDY, max_tokens=5)
    reference = [s.token for s in generate_alone(engine, prompts[1], params)]
    rows = [engine.admit(p, params) for p in prompts]
    engine.step({rows[0]: 64, rows[1]: 64})  # both prefilled, first tokens
    original = Batcher._forward

    def broken(self: Batcher, batch: Any) -> Any:
        raise MemoryError("out of memory (simulated)")

    monkeypatch.setattr(Batcher, "_forward", broken)
    with pytest.raises(EngineUnavailable):
        engine.step({})
    monkeypatch.setattr(Batcher, "_forward", original)
    assert engine.step({}).rows == ()  # every row was dropped
    engine.release(rows[0], keep=True)  # released rows are ignored
    assert [s.token for s in generate_alone(engine, prompts[1], params)] == reference


@pytest.mark.parametrize("model", ["smollm", "qwen3"])
def test_a_kept_row_serves_the_next_turn_from_the_prefix_cache(engines: dict[str, MlxEngine],
                                                                model: str) -> None:
    engine = engines[model]
    first = Request("Look at this and say something." if model == "qwen3" else "Say something nice.",
                    8, (80, 64) if model == "qwen3" else None, (10, 160, 40))
    neighbour = prepare(engine, Request("Name a number.", 0))
    params = attrs.evolve(GREEDY, max_tokens=8)
    batched, errors = Script([prepare(engine, first), neighbour], [params, params],
                             joins=[0, 1], grant=8).run(engine)  # kept on finishing
    assert errors == [None, None]
    reply = "".join(s.text for s in batched[0])
    follow = prepare(engine, first, reply, Request("Say it again.", 0))
    assert follow.cached_tokens > 0
    cold = uncached(follow)
    assert [s.token for s in generate_alone(engine, follow, params)] == \
        [s.token for s in generate_alone(engine, cold, params)]


def test_a_gemma_row_past_its_sliding_window_decodes_in_a_batch_as_alone(
        engines: dict[str, MlxEngine]) -> None:
    """The local layers' windows (512) wrap while the row prefills and decodes beside a short row
    joining later; its kept state (a wrapped window) then serves the next turn whole."""
    engine = engines["gemma3"]
    words = Request("Please remember these words: " + " ".join(f"w{i}" for i in range(260)), 8)
    prompts = [prepare(engine, words), prepare(engine, Request("Hi.", 0))]
    assert prompts[0].token_count > 512
    params = [attrs.evolve(GREEDY, max_tokens=8, logprobs=True), attrs.evolve(GREEDY, max_tokens=6)]
    references = [alone(engine, p, q) for p, q in zip(prompts, params, strict=True)]
    batched, errors = Script(prompts, params, joins=[0, 3], grant=64).run(engine)
    assert errors == [None, None]
    for index in (0, 1):
        assert_same_tokens(references[index], batched[index], gap_limit(engine), f"gemma3 window {index}")
    follow = prepare(engine, words, "".join(s.text for s in batched[0]), Request("Which was first?", 0))
    follow_params = attrs.evolve(GREEDY, max_tokens=6)
    assert [s.token for s in generate_alone(engine, follow, follow_params)] == \
        [s.token for s in generate_alone(engine, uncached(follow), follow_params)]


def test_a_load_warms_up_the_batch_sizes_and_leaves_nothing_behind(tiny_qwen3_vl: Path) -> None:
    """On a GPU a load runs a short generation at each batch size the scheduler uses (asked for
    explicitly here, on the CPU): afterwards no row is left, the prefix cache holds nothing from
    it, and the first real request generates as on an engine that never warmed up."""
    ref = ModelRef("tiny-qwen3-vl", str(tiny_qwen3_vl), QWEN3_VL.name, 4096, vision=True)
    request = PromptInput(messages=(Message(Role.USER, (TextPart("Name three colours."),)),))
    outputs = []
    for warm in ((), (1, 2, 3)):
        engine = MlxEngine(warm_batches=warm)
        engine.load(ref)
        batcher = engine._batcher
        assert warm == () or (batcher is not None and batcher._next_id == sum(warm))
        assert batcher is None or not batcher.rows
        prompt = engine.prepare(request)
        assert prompt.cached_tokens == 0  # the warm-up saved nothing (its template prefix is shared)
        outputs.append([s.token for s in generate_alone(
            engine, prompt, SamplingParams(temperature=0.0, max_tokens=6))])
        engine.unload()
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("model", ["smollm", "qwen3"])
def test_a_stable_batch_launches_each_step_ahead_and_rows_leaving_mid_flight_change_nothing(
        engines: dict[str, MlxEngine], model: str) -> None:
    """Every row prefilled in the first step, then decoding together with no joiner: each step
    launches the next before reading its tokens (docs/batching.md §2.1.7). Rows finishing (EOS,
    max_tokens) or released (a stop sequence: kept) while a step is in flight lose only that
    step's token: the others give their tokens and log-probabilities alone, and the kept row's
    state serves its next turn as an uncached prefill would."""
    engine = engines[model]
    texts = ["Say something nice.", "Name three colours.", "Count to five.", "Why is the sky blue?"]
    prompts = [prepare(engine, Request(t, 0)) for t in texts]
    params = [attrs.evolve(GREEDY, max_tokens=n, logprobs=True) for n in (9, 4, 9, 6)]
    # uncached: the references keep nothing, and the batched rows' plans stay what they were
    references = [alone(engine, uncached(p), q) for p, q in zip(prompts, params, strict=True)]
    stop_at = 5  # row 0 is ended by the "domain" after this many tokens, as a stop string would
    rows = [engine.admit(p, q) for p, q in zip(prompts, params, strict=True)]
    index = {row: i for i, row in enumerate(rows)}
    got: list[list[GenerationStep]] = [[] for _ in rows]
    grant, live, launched = {row: 4096 for row in rows}, set(rows), 0
    while live:
        report = engine.step(grant)
        grant = {}
        batcher = engine._batcher
        assert batcher is not None
        launched += batcher.batch.pending is not None
        for progress in report.rows:
            assert progress.error is None and progress.step is not None
            i = index[progress.row]
            got[i].append(progress.step)
            if progress.step.finish_reason is not None or (i == 0 and len(got[i]) == stop_at):
                engine.release(progress.row, keep=True)
                live.discard(progress.row)
    assert launched > 0
    limit = gap_limit(engine)
    assert len(got[0]) == stop_at
    for i, (reference, steps) in enumerate(zip(references, got, strict=True)):
        assert_same_tokens(reference, steps, limit, f"{model} pipelined row {i}")
    assert engine._batcher is not None and engine._batcher.batch.pending is None
    reply = "".join(s.text for s in got[0])
    follow = prepare(engine, Request(texts[0], 0), reply, Request("Say it again.", 0))
    assert follow.cached_tokens > 0
    follow_params = attrs.evolve(GREEDY, max_tokens=6)
    assert [s.token for s in generate_alone(engine, follow, follow_params)] == \
        [s.token for s in generate_alone(engine, uncached(follow), follow_params)]
