"""The chat-completion use case: resolve the model, make it the loaded one, generate, assemble."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator

import attrs

from .completion import (
    Completion,
    FinishReason,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    Usage,
)
from .conversation import ChatRequest, ImagePart, SamplingParams, ToolChoiceMode
from .errors import ContextTooLong, DomainError, EngineFailure, InvalidRequest
from .models import ModelRef
from .ports import (
    Clock,
    IdSource,
    ImageLoader,
    InferenceEngine,
    LoadedImage,
    ModelCatalog,
    PreparedPrompt,
    PromptInput,
)
from .stops import StopMatcher
from .worker import Cancelled, GenerationWorker


@attrs.define
class ChatService:
    catalog: ModelCatalog
    engine: InferenceEngine
    clock: Clock
    ids: IdSource
    worker: GenerationWorker = attrs.field(factory=GenerationWorker)
    images: ImageLoader | None = None
    max_tokens_cap: int = 4096  # completion length when the request sets none

    @property
    def loaded_model(self) -> ModelRef | None:
        return self.engine.loaded

    async def load(self, name: str) -> ModelRef:
        """Make `name` the model in memory (swapping out the current one) and return it."""
        model = await asyncio.to_thread(self.catalog.resolve, name)
        await self.worker.call(lambda: self._ensure_loaded(model))
        return model

    async def open_stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Start generating; errors before the first token (unknown model, prompt too long)
        raise here, so the caller can still answer with a proper status."""
        _check_tools(request)
        model = await asyncio.to_thread(self.catalog.resolve, request.model)
        images = await self._load_images(request, model)  # before queueing for the engine
        prompt = PromptInput(request.messages, request.tools, images)
        events = self.worker.run(lambda cancelled: _engine_faults(
            self._generate(request, prompt, model, cancelled)))
        first = await anext(events)
        return _chain(first, events)

    async def complete(self, request: ChatRequest) -> Completion:
        pieces: list[str] = []
        start: StreamStart | None = None
        async for event in await self.open_stream(request):
            if isinstance(event, StreamStart):
                start = event
            elif isinstance(event, TextDelta):
                pieces.append(event.text)
            elif start is not None:
                return Completion(id=start.id, created=start.created, model=start.model,
                                  text="".join(pieces) if pieces or not event.tool_calls else None,
                                  finish_reason=event.finish_reason, usage=event.usage,
                                  tool_calls=event.tool_calls)
        raise EngineFailure("generation ended without finishing")

    def _ensure_loaded(self, model: ModelRef) -> ModelRef:
        """Swap `model` in unless it is the loaded one; return the loaded reference."""
        loaded = self.engine.loaded
        if loaded is not None and loaded.id == model.id:
            return loaded
        self.engine.load(self.catalog.fetch(model))
        return self.engine.loaded or model

    async def _load_images(self, request: ChatRequest, model: ModelRef) -> tuple[LoadedImage, ...]:
        """Decode or fetch every image part concurrently; the first failure cancels the rest."""
        jobs = [(f"messages[{i}].content[{j}].image_url.url", part.url)
                for i, message in enumerate(request.messages)
                for j, part in enumerate(message.content) if isinstance(part, ImagePart)]
        if not jobs:
            return ()
        if not model.vision or self.images is None:
            raise InvalidRequest(f"The model {model.id!r} has no vision: it cannot take images. "
                                 "Send text only, or choose a vision model (gemma, qwen).",
                                 param=jobs[0][0], code="unsupported_value")
        loader = self.images
        tasks = [asyncio.ensure_future(loader.load(url, param=param)) for param, url in jobs]
        try:
            return tuple(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    def _generate(
        self, request: ChatRequest, source: PromptInput, model: ModelRef, cancelled: Cancelled
    ) -> Generator[StreamEvent, None, None]:
        model = self._ensure_loaded(model)
        prompt = self.engine.prepare(source)
        params = attrs.evolve(request.sampling,
                              max_tokens=self._completion_budget(prompt, request.sampling, model))
        yield StreamStart(id=self.ids.completion_id(), created=int(self.clock.now()), model=model.id)
        matcher = StopMatcher(params.stop)
        produced, reason = 0, FinishReason.LENGTH
        with contextlib.closing(self.engine.generate(prompt, params)) as steps:
            for step in steps:
                produced += step.token is not None
                text, stopped = matcher.feed(step.text)
                if text:
                    yield TextDelta(text)
                if stopped or step.finish_reason is not None:
                    reason = FinishReason.STOP if stopped else step.finish_reason or reason
                    break
                if cancelled():
                    return
        if tail := matcher.flush():
            yield TextDelta(tail)
        yield StreamEnd(reason, Usage(prompt.token_count, produced, prompt.cached_tokens))

    def _completion_budget(
        self, prompt: PreparedPrompt, sampling: SamplingParams, model: ModelRef
    ) -> int:
        room = model.context_length - prompt.token_count
        wanted = sampling.max_tokens
        if room <= 0 or (wanted is not None and wanted > room):
            asked = f" plus {wanted} completion tokens" if wanted is not None else ""
            raise ContextTooLong(
                f"This model's maximum context length is {model.context_length} tokens. "
                f"The request has {prompt.token_count} prompt tokens{asked}. "
                "Shorten the messages or lower max_tokens.",
                param="messages",
            )
        return wanted if wanted is not None else min(room, self.max_tokens_cap)


def _check_tools(request: ChatRequest) -> None:
    choice = request.tool_choice
    names = {tool.name for tool in request.tools}
    if choice.mode is ToolChoiceMode.REQUIRED and not names:
        raise InvalidRequest("tool_choice 'required' needs at least one tool in 'tools'.",
                             param="tool_choice")
    if choice.mode is ToolChoiceMode.FUNCTION and choice.function not in names:
        raise InvalidRequest(f"tool_choice names function {choice.function!r}, which is not in "
                             "'tools'.", param="tool_choice")


def _engine_faults(events: Generator[StreamEvent, None, None]) -> Generator[StreamEvent, None, None]:
    """Whatever an engine raises that is not a domain error is a server fault: say so plainly."""
    try:
        yield from events
    except DomainError:
        raise
    except Exception as exc:
        raise EngineFailure(f"Inference failed: {type(exc).__name__}: {exc}") from exc


async def _chain(first: StreamEvent, rest: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
