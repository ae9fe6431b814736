"""Decisions the chat service takes once: tools and images against the model (as soon as its
config is known), the time to first token, and serving (preload, status, the model list)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import attrs
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.domain.chat import ChatService
from mlx_server.domain.completion import StreamStart
from mlx_server.domain.conversation import ChatRequest, ImagePart, Message, Role, TextPart, ToolSpec
from mlx_server.domain.errors import InvalidRequest, ModelNotFound
from mlx_server.domain.families import GEMMA3
from mlx_server.domain.lifecycle import ServiceStatus, StartupPolicy
from mlx_server.domain.models import ModelInfo, ModelRef
from mlx_server.domain.ports import LoadedImage, NoMetrics
from tests.support.fakes import CountingIds, FixedClock

GUESS = ModelRef("org/new-model", "org/new-model", settled=False)  # config not read yet
GEMMA_VL = ModelRef("org/new-model", "/cache/new-model", GEMMA3.name, 8192, vision=True)


@attrs.frozen
class HubCatalog:
    """One hub repo not downloaded yet: resolve can only guess; fetch reads its config."""

    guess: ModelRef
    fetched: ModelRef

    def resolve(self, name: str) -> ModelRef:
        return self.guess

    def fetch(self, model: ModelRef) -> ModelRef:
        return self.fetched

    def list_models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(self.guess.id)]

    def is_local(self, model: ModelRef) -> bool:
        return False


class DecodedImages:
    """An image loader that decodes nothing: every URL is an image."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    async def load(self, url: str, *, param: str) -> LoadedImage:
        self.loaded.append(url)
        return LoadedImage(key=url, image=None)


class TickingClock(FixedClock):
    """Half a second passes at each reading: durations the service measures are not zero."""

    def now(self) -> float:
        self.value += 0.5
        return self.value


class TimedMetrics(NoMetrics):
    def __init__(self) -> None:
        self.ttfts: list[float] = []

    def generation(self, model: str, *, prompt_tokens: int, cached_tokens: int,
                   completion_tokens: int, ttft: float, decode_seconds: float) -> None:
        self.ttfts.append(ttft)


def chat(catalog: object, engine: FakeEngine, **more: object) -> ChatService:
    return ChatService(catalog=catalog, engine=engine, clock=FixedClock(),  # type: ignore[arg-type]
                       ids=CountingIds(), images=DecodedImages(), **more)  # type: ignore[arg-type]


def with_image() -> ChatRequest:
    return ChatRequest("org/new-model", (Message(Role.USER, (
        TextPart("What is it?"), ImagePart("data:image/png;base64,AAAA"))),))


def with_tools() -> ChatRequest:
    return ChatRequest("org/new-model", (Message(Role.USER, (TextPart("weather?"),)),),
                       tools=(ToolSpec("get_weather"),))


def test_a_settled_model_without_vision_is_refused_before_anything_loads() -> None:
    settled = attrs.evolve(GUESS, settled=True)
    engine = FakeEngine()
    with pytest.raises(InvalidRequest, match="no vision") as caught:
        asyncio.run(chat(HubCatalog(settled, settled), engine).complete(with_image()))
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert engine.loads == []


def test_a_guessed_model_is_judged_on_its_fetched_config_for_images() -> None:
    """The guess says no vision; the config read on fetch says vision: the image is taken."""
    engine = FakeEngine()
    result = asyncio.run(chat(HubCatalog(GUESS, GEMMA_VL), engine).complete(with_image()))
    assert result.text and engine.loads == ["org/new-model"]


def test_a_guessed_model_whose_config_has_no_vision_is_refused_after_the_fetch() -> None:
    guess = attrs.evolve(GUESS, vision=True)
    text_only = attrs.evolve(GEMMA_VL, vision=False)
    engine = FakeEngine()
    with pytest.raises(InvalidRequest, match="no vision") as caught:
        asyncio.run(chat(HubCatalog(guess, text_only), engine).complete(with_image()))
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert engine.loads == ["org/new-model"]


def test_tools_are_planned_for_the_fetched_family_of_a_guessed_model() -> None:
    """A generic guess has no tool format; the fetched Gemma 3 has one."""
    engine = FakeEngine(['```tool_code\nget_weather(city="Paris")\n```'])
    result = asyncio.run(chat(HubCatalog(GUESS, GEMMA_VL), engine).complete(with_tools()))
    assert [call.name for call in result.tool_calls] == ["get_weather"]


def test_tools_a_settled_model_cannot_call_are_refused_before_anything_loads() -> None:
    settled = attrs.evolve(GUESS, settled=True)
    engine = FakeEngine()
    with pytest.raises(InvalidRequest, match="tool-calling format") as caught:
        asyncio.run(chat(HubCatalog(settled, settled), engine).complete(with_tools()))
    assert caught.value.param == "tools" and engine.loads == []


def test_the_time_to_first_token_is_measured_once_and_carried_from_the_start() -> None:
    metrics = TimedMetrics()
    service = ChatService(catalog=StaticCatalog(), engine=FakeEngine(), clock=TickingClock(),
                          ids=CountingIds(), metrics=metrics)
    request = ChatRequest("gemma", (Message(Role.USER, (TextPart("hi"),)),))

    async def run() -> tuple[float | None, float | None, float | None]:
        completion = await service.complete(request)
        async with contextlib.aclosing(await service.open_stream(request)) as stream:
            events = [event async for event in stream]
        async with contextlib.aclosing(await service.open_stream(request)) as cut:
            await anext(cut)  # the client leaves after the first event: the figure is known
        assert isinstance(events[0], StreamStart) and stream.ttft == events[0].ttft
        return completion.ttft, stream.ttft, cut.ttft

    completed, streamed, cut_short = asyncio.run(run())
    # (the fake engine may finish the cut stream on its thread before the close is seen)
    assert metrics.ttfts[:2] == [completed, streamed] and completed is not None and completed > 0
    assert cut_short is not None and cut_short > 0


def test_start_preloads_the_fallback_when_the_model_cannot_be_had() -> None:
    engine = FakeEngine()
    service = chat(StaticCatalog(), engine, startup=StartupPolicy("no-such-model", "smollm"))

    async def run() -> ServiceStatus:
        await service.start()
        status = service.status()
        await service.stop()
        return status

    assert asyncio.run(run()) == ServiceStatus("idle", "HuggingFaceTB/SmolLM2-135M-Instruct", 0)
    assert engine.loads == ["HuggingFaceTB/SmolLM2-135M-Instruct"]


@pytest.mark.parametrize(("policy", "expected"), [
    (StartupPolicy(), ()), (StartupPolicy(fallback="smollm"), ()),
    (StartupPolicy("gemma", "gemma"), ("gemma",)),
    (StartupPolicy("gemma", "smollm"), ("gemma", "smollm")),
])
def test_a_fallback_only_stands_in_for_a_model_asked_for(policy: StartupPolicy,
                                                         expected: tuple[str, ...]) -> None:
    assert policy.candidates() == expected


def test_the_model_list_names_the_loaded_model() -> None:
    service = chat(StaticCatalog(), FakeEngine())

    async def run() -> None:
        assert (await service.models()).loaded is None
        await service.load("gemma")
        listing = await service.models()
        assert listing.loaded == "mlx-community/gemma-3-4b-it-4bit"
        assert "mlx-community/gemma-3-4b-it-4bit" in [model.id for model in listing.models]
        one = await service.models("gemma")
        assert [model.id for model in one.models] == ["mlx-community/gemma-3-4b-it-4bit"]
        with pytest.raises(ModelNotFound):
            await service.models("no-such-model")
        await service.stop()

    asyncio.run(run())
