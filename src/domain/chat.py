"""The chat-completion use case: resolve the model, make it the loaded one, generate, assemble."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Generator

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
from .tool_calls import (
    CallArguments,
    CallStarted,
    ContentPiece,
    ToolCallStreamer,
    ToolEvent,
    assemble,
)
from .tool_plan import PlainText, ToolPlan, plan_tools
from .worker import Cancelled, GenerationWorker

log = logging.getLogger(__name__)


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
        plan_tools(request, model)  # refuse tools the model cannot call before loading anything
        images = await self._load_images(request, model)  # before queueing for the engine
        events = self.worker.run(lambda cancelled: _engine_faults(
            self._generate(request, images, model, cancelled)))
        first = await anext(events)
        return _chain(first, events)

    async def complete(self, request: ChatRequest) -> Completion:
        """The stream, assembled: streaming and not always agree."""
        events: list[ToolEvent] = []
        start: StreamStart | None = None
        async for event in await self.open_stream(request):
            if isinstance(event, StreamStart):
                start = event
            elif isinstance(event, TextDelta):
                events.append(ContentPiece(event.text))
            elif isinstance(event, CallStarted | CallArguments):
                events.append(event)
            elif start is not None:
                reply = assemble(events)
                return Completion(id=start.id, created=start.created, model=start.model,
                                  text=reply.content, finish_reason=event.finish_reason,
                                  usage=event.usage, tool_calls=reply.calls)
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
        self, request: ChatRequest, images: tuple[LoadedImage, ...], model: ModelRef,
        cancelled: Cancelled,
    ) -> Generator[StreamEvent, None, None]:
        model = self._ensure_loaded(model)  # the fetched model's family may differ: plan again
        plan = plan_tools(request, model)
        prompt = self.engine.prepare(PromptInput(plan.messages, plan.template_tools, images,
                                                 plan.prefix))
        params = attrs.evolve(request.sampling,
                              max_tokens=self._completion_budget(prompt, request.sampling, model))
        yield StreamStart(id=self.ids.completion_id(), created=int(self.clock.now()), model=model.id)
        run = _Run(plan, self.ids.tool_call_id, params.stop)
        yield from run.take(run.parser.feed(plan.prefix))  # the model's output continues it
        produced, reason = 0, FinishReason.LENGTH
        with contextlib.closing(self.engine.generate(prompt, params)) as steps:
            for step in steps:
                produced += step.token is not None
                text, stopped = run.matcher.feed(step.text)
                yield from run.take(run.parser.feed(text))
                if stopped or step.finish_reason is not None or run.done:
                    reason = FinishReason.STOP if stopped else step.finish_reason or reason
                    break
                if cancelled():
                    return
        if not run.done:
            yield from run.take(run.parser.feed(run.matcher.flush()) + run.parser.finish())
        reason = FinishReason.TOOL_CALLS if run.calls else reason
        if run.parser.rejected:  # counted; returned to the client as content, never lost
            log.warning("%s: %d tool call block(s) rejected", model.id, run.parser.rejected)
        yield StreamEnd(reason, Usage(prompt.token_count, produced, prompt.cached_tokens),
                        rejected_calls=run.parser.rejected)

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


class _Run:
    """One generation's text pipeline: stop sequences, then tool-call parsing."""

    def __init__(self, plan: ToolPlan, new_id: Callable[[], str], stops: tuple[str, ...]) -> None:
        self.plan = plan
        self.matcher = StopMatcher((*stops, *plan.stops))
        self.parser: ToolCallStreamer = (plan.format.streamer(plan.tools, new_id) if plan.format
                                         else PlainText())
        self.calls = 0
        self.done = False  # parallel_tool_calls false: the first call ends the turn

    def take(self, events: list[ToolEvent]) -> Generator[StreamEvent, None, None]:
        for event in events:
            if isinstance(event, ContentPiece):
                if event.text and not self.done:
                    yield TextDelta(event.text)
                continue
            if self.plan.single_call and event.index > 0:
                continue  # NOTE: a second call in the same block is dropped, not turned to text
            self.calls += isinstance(event, CallStarted)
            yield event
            self.done = self.plan.single_call and isinstance(event, CallArguments)


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
