from __future__ import annotations

import asyncio
import threading

import attrs
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.domain.chat import ChatLimits, ChatService
from mlx_server.domain.completion import (
    FinishReason,
    StreamEnd,
    StreamStart,
    TextDelta,
)
from mlx_server.domain.conversation import (
    ChatRequest,
    Message,
    Role,
    SamplingParams,
    TextPart,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from mlx_server.domain.errors import ContextTooLong, InvalidRequest, ModelNotFound
from mlx_server.domain.models import ModelRef
from mlx_server.domain.ports import NoMetrics, PreparedPrompt, PromptInput, RowId
from tests.support.fakes import CountingIds, FixedClock


def service(engine: FakeEngine | None = None) -> ChatService:
    return ChatService(catalog=StaticCatalog(), engine=engine or FakeEngine(),
                       clock=FixedClock(), ids=CountingIds(),
                       limits=ChatLimits(max_tokens_cap=64))


def ask(text: str, model: str = "gemma", **sampling: object) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(Role.USER, (TextPart(text),)),),
                       sampling=SamplingParams(**sampling))  # type: ignore[arg-type]


def test_completion_assembles_text_usage_and_resolved_id() -> None:
    result = asyncio.run(service().complete(ask("hello there")))
    assert result.text == "You said: hello there"
    assert result.model == "mlx-community/gemma-3-4b-it-4bit"
    assert result.finish_reason is FinishReason.STOP
    assert (result.usage.completion_tokens, result.id, result.created) == (4, "chatcmpl-1",
                                                                             1_700_000_000)
    assert result.usage.total_tokens == result.usage.prompt_tokens + 4


def test_max_tokens_cuts_with_finish_reason_length() -> None:
    result = asyncio.run(service().complete(ask("one two three four", max_tokens=2)))
    assert (result.text, result.finish_reason) == ("You said:", FinishReason.LENGTH)
    assert result.usage.completion_tokens == 2


def test_stop_sequence_ends_generation_without_the_stop_text() -> None:
    engine = FakeEngine(["alpha beta STOP gamma"])
    result = asyncio.run(service(engine).complete(ask("x", stop=("STOP",))))
    assert (result.text, result.finish_reason) == ("alpha beta ", FinishReason.STOP)


def test_stream_events_in_order() -> None:
    async def collect() -> list[object]:
        return [event async for event in await service().open_stream(ask("hi"))]

    events = asyncio.run(collect())
    assert isinstance(events[0], StreamStart)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["You", " said:", " hi"]
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason is FinishReason.STOP


def test_swapping_models_loads_each_once_per_change() -> None:
    engine = FakeEngine()
    chat = service(engine)

    async def run() -> None:
        for name in ("gemma", "gemma", "qwen", "mlx-community/Qwen3-VL-4B-Instruct-4bit", "gemma"):
            await chat.complete(ask("hi", model=name))

    asyncio.run(run())
    assert engine.loads == ["mlx-community/gemma-3-4b-it-4bit",
                            "mlx-community/Qwen3-VL-4B-Instruct-4bit",
                            "mlx-community/gemma-3-4b-it-4bit"]


def test_unknown_model_raises_before_streaming() -> None:
    with pytest.raises(ModelNotFound):
        asyncio.run(service().open_stream(ask("hi", model="no-such-model")))


def test_context_too_long_is_refused_with_numbers() -> None:
    tiny = ModelRef(id="tiny", source="tiny", context_length=8)
    chat = ChatService(catalog=StaticCatalog({"tiny": tiny}), engine=FakeEngine(),
                       clock=FixedClock(), ids=CountingIds())
    with pytest.raises(ContextTooLong, match="maximum context length is 8 tokens"):
        asyncio.run(chat.complete(ask("a b c", model="tiny", max_tokens=5)))


def test_default_budget_is_capped_by_the_server_setting() -> None:
    engine = FakeEngine([" ".join(["w"] * 100)])
    result = asyncio.run(service(engine).complete(ask("x")))
    assert result.usage.completion_tokens == 64 and result.finish_reason is FinishReason.LENGTH


def test_tool_choice_must_name_a_given_tool() -> None:
    request = ChatRequest(model="gemma", messages=ask("x").messages,
                          tools=(ToolSpec("get_weather"),),
                          tool_choice=ToolChoice(ToolChoiceMode.FUNCTION, "other"))
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(service().complete(request))
    assert caught.value.param == "tool_choice"


class EndlessEngine(FakeEngine):
    """A first reply too long to finish, then an echo; records its first row's release."""

    def __init__(self) -> None:
        super().__init__([" x" * 100_000, "You said: again"])
        self.closed = threading.Event()

    def release(self, row: RowId, *, keep: bool) -> None:
        super().release(row, keep=keep)
        if row == 1:
            self.closed.set()


def test_closing_the_stream_stops_generation_and_frees_the_worker() -> None:
    engine = EndlessEngine()
    chat = service(engine)

    async def run() -> str | None:
        stream = await chat.open_stream(ask("hi", max_tokens=10_000))
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await stream.aclose()
        await asyncio.to_thread(engine.closed.wait, 5)
        follow_up = await service_after(chat)
        return follow_up

    async def service_after(chat: ChatService) -> str | None:
        return (await chat.complete(ask("again"))).text

    assert asyncio.run(run()) == "You said: again"
    assert engine.closed.is_set()


class RecordingMetrics(NoMetrics):
    def __init__(self) -> None:
        self.cancellations: list[tuple[str, str]] = []

    def cancelled(self, model: str, phase: str) -> None:
        self.cancellations.append((model, phase))


class SlowPrefillEngine(FakeEngine):
    """A prefill of many one-token chunks, 10 ms a step; records its first row's start and
    release, and the prompt tokens prefilled."""

    def __init__(self, chunks: int = 1000) -> None:
        super().__init__(["never", "You said: next"], delay=0.01, prefill_chunk=1)
        self.chunks = chunks
        self.started, self.stopped = threading.Event(), threading.Event()
        self.first_steps = 0

    @property
    def done(self) -> int:
        """Prompt tokens of the first row prefilled before it was released."""
        return sum(self.prefills[:self.first_steps])

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        prepared = super().prepare(prompt)
        return prepared if self.started.is_set() else attrs.evolve(prepared,
                                                                   token_count=self.chunks)

    def admit(self, prompt: PreparedPrompt, params: SamplingParams) -> RowId:
        self.started.set()
        return super().admit(prompt, params)

    def release(self, row: RowId, *, keep: bool) -> None:
        super().release(row, keep=keep)
        if row == 1:
            self.first_steps = len(self.prefills)
            self.stopped.set()


def test_a_request_cancelled_in_prefill_stops_between_chunks_and_frees_the_worker() -> None:
    engine, metrics = SlowPrefillEngine(), RecordingMetrics()
    chat = ChatService(catalog=StaticCatalog(), engine=engine, clock=FixedClock(),
                       ids=CountingIds(), metrics=metrics)

    async def run() -> str:
        opening = asyncio.ensure_future(chat.open_stream(ask("a long prompt")))
        await asyncio.to_thread(engine.started.wait, 5)
        opening.cancel()  # what the HTTP layer does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await opening
        assert await asyncio.to_thread(engine.stopped.wait, 5)
        return (await chat.complete(ask("next"))).text

    assert asyncio.run(run()) == "You said: next"
    assert engine.done < engine.chunks  # stopped part-way, not after the whole prefill
    assert metrics.cancellations == [("mlx-community/gemma-3-4b-it-4bit", "prefill")]


def test_a_request_cancelled_while_queued_never_runs_and_is_counted() -> None:
    engine, metrics = SlowPrefillEngine(chunks=30), RecordingMetrics()
    chat = ChatService(catalog=StaticCatalog(), engine=engine, clock=FixedClock(),
                       ids=CountingIds(), metrics=metrics)

    async def run() -> None:
        first = asyncio.ensure_future(chat.complete(ask("first")))
        await asyncio.to_thread(engine.started.wait, 5)
        queued = asyncio.ensure_future(chat.complete(ask("second")))
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.gather(first, queued, return_exceptions=True)
        chat.worker.stop()

    asyncio.run(run())
    assert metrics.cancellations == [("mlx-community/gemma-3-4b-it-4bit", "queued")]
    assert engine.done == engine.chunks  # only the first request ran


def test_finished_requests_are_never_counted_as_cancelled() -> None:
    """complete() stops reading at the last event; the worker may then close the finished job."""
    metrics = RecordingMetrics()
    chat = ChatService(catalog=StaticCatalog(), engine=FakeEngine(), clock=FixedClock(),
                       ids=CountingIds(), metrics=metrics)

    async def run() -> None:
        for _ in range(100):
            await chat.complete(ask("hello"))
        chat.worker.stop()

    asyncio.run(run())
    assert metrics.cancellations == []


# -- a raw prompt (legacy completions): the same pipeline, no template -------------------------

class RecordingEngine(FakeEngine):
    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.prompts: list[PromptInput] = []

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        self.prompts.append(prompt)
        return super().prepare(prompt)


def raw(prompt: str, *, echo: bool = False, model: str = "gemma",
        **sampling: object) -> ChatRequest:
    return ChatRequest(model=model, messages=(), prompt=prompt, echo=echo,
                       sampling=SamplingParams(**sampling))  # type: ignore[arg-type]


def test_a_raw_prompt_reaches_the_engine_as_it_is() -> None:
    engine = RecordingEngine([" return a + b\ndef sub"])
    result = asyncio.run(service(engine).complete(raw("def add(a, b):", stop=("\ndef",))))
    assert engine.prompts == [PromptInput((), raw="def add(a, b):")]
    assert (result.text, result.finish_reason) == (" return a + b", FinishReason.STOP)
    assert result.usage.prompt_tokens == 3 and result.tool_calls == ()


def test_a_raw_prompt_offers_no_tools_even_to_a_tool_family() -> None:
    engine = RecordingEngine(['<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'])
    result = asyncio.run(service(engine).complete(raw("x", model="qwen")))
    assert result.tool_calls == () and result.text and result.text.startswith("<tool_call>")
    assert engine.prompts[0].tools == () and engine.prompts[0].assistant_prefix == ""


def test_echo_streams_the_prompt_first_and_counts_only_generated_tokens() -> None:
    async def collect() -> list[object]:
        return [e async for e in await service(FakeEngine([" b c"])).open_stream(
            raw("a", echo=True, max_tokens=1))]

    events = asyncio.run(collect())
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", " b"]
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason is FinishReason.LENGTH
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (1, 1)


def test_a_raw_prompt_too_long_for_the_context_names_prompt() -> None:
    tiny = ModelRef(id="tiny", source="tiny", context_length=8)
    chat = ChatService(catalog=StaticCatalog({"tiny": tiny}), engine=FakeEngine(),
                       clock=FixedClock(), ids=CountingIds())
    with pytest.raises(ContextTooLong) as raised:
        asyncio.run(chat.complete(raw("a b c d e", model="tiny", max_tokens=5)))
    assert raised.value.param == "prompt"


def test_a_raw_prompt_meets_the_sampling_checks() -> None:
    with pytest.raises(InvalidRequest) as raised:
        asyncio.run(service().complete(raw("x", logit_bias={10**6: 1.0})))
    assert raised.value.param == "logit_bias"
