"""The chat-completion use case: resolve the model, make it the loaded one, generate, assemble."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import attrs

from .completion import (
    Completion,
    FinishReason,
    GenerationStep,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    TokenLogprob,
    Usage,
)
from .conversation import ChatRequest, ImagePart, SamplingParams, ToolChoiceMode
from .errors import ContextTooLong, DomainError, EngineFailure, InvalidRequest
from .families import profile_named
from .lifecycle import (
    ModelListing,
    ServiceStatus,
    StartupPolicy,
    list_models,
    preload,
    unload_when_idle,
)
from .models import ModelRef
from .ports import (
    Clock,
    IdSource,
    ImageLoader,
    InferenceEngine,
    LoadedImage,
    Metrics,
    ModelCatalog,
    NoMetrics,
    PreparedPrompt,
    PromptInput,
    RowId,
)
from .reasoning import ReasoningSplitter, Start, reply_start
from .sampling_checks import check_sampling, check_token_ids
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
from .worker import AwaitStep, Cancelled, GenerationWorker, QueuePolicy

log = logging.getLogger(__name__)


@attrs.frozen
class ChatLimits:
    """What a request may ask for by default; the command line's defaults are these."""

    max_tokens_cap: int = 4096  # completion length when the request sets none
    max_images: int = 16  # per request: each is fetched and decoded whole before it queues


@attrs.define
class ChatService:
    catalog: ModelCatalog
    engine: InferenceEngine
    clock: Clock
    ids: IdSource
    images: ImageLoader | None = None
    metrics: Metrics = attrs.field(factory=NoMetrics)
    # the composition root passes one wired to its engine and metrics; this default reports
    # to the service's own (declared after them: attrs builds defaults in field order)
    worker: GenerationWorker = attrs.field(
        default=attrs.Factory(lambda self: self._default_worker(), takes_self=True))
    limits: ChatLimits = attrs.field(factory=ChatLimits)
    startup: StartupPolicy = attrs.field(factory=StartupPolicy)

    last_used: float = attrs.field(init=False)  # clock time of the last request (idle unload)
    _loading: bool = attrs.field(init=False, default=False)  # a model loads (and warms up)
    _idle: asyncio.Task[None] | None = attrs.field(init=False, default=None)

    @last_used.default
    def _now(self) -> float:
        return self.clock.now()

    def _default_worker(self) -> GenerationWorker:
        return generation_worker(self.engine, self.metrics)

    @property
    def loaded_model(self) -> ModelRef | None:
        return self.engine.loaded

    # -- serving: what the HTTP layer starts, stops and reports -----------------------------

    async def start(self) -> None:
        """Begin serving: free the model when idle (if asked), then preload the startup model
        or its fallback."""
        if self.startup.idle_unload > 0:
            self._idle = asyncio.create_task(unload_when_idle(self.unload_if_idle,
                                                              self.startup.idle_unload))
        await preload(self.load, self.startup.candidates())

    async def stop(self) -> None:
        """Stop the idle timer and join the generation thread (running jobs finish first)."""
        if self._idle is not None:
            self._idle.cancel()
        await asyncio.to_thread(self.worker.stop)

    def status(self) -> ServiceStatus:
        worker = self.worker
        state = ("down" if not worker.alive else "loading" if self._loading
                 else "busy" if worker.busy else "idle")
        return ServiceStatus(state, self.loaded_id(), worker.queued, worker.rows,
                             worker.policy.max_batch)

    async def models(self, name: str | None = None) -> ModelListing:
        """Every model a client may name, or the one `name` resolves to (ModelNotFound)."""
        return await asyncio.to_thread(list_models, self.catalog, name, self.loaded_id())

    def loaded_id(self) -> str | None:
        """The id of the model in memory, if any."""
        return _loaded_id(self.engine)

    async def unload_if_idle(self, seconds: float) -> bool:
        """Free the model when no request came for `seconds`; the next request loads it again."""
        if self.engine.loaded is None or self.worker.queued:
            return False
        if self.clock.now() - self.last_used < seconds:
            return False

        def unload() -> bool:  # queued behind a running job: check again once it is our turn
            if self.clock.now() - self.last_used < seconds or self.engine.loaded is None:
                return False
            self.engine.unload()
            return True

        return await self.worker.call(unload)

    async def load(self, name: str) -> ModelRef:
        """Make `name` the model in memory (swapping out the current one) and return it."""
        model = await asyncio.to_thread(self.catalog.resolve, name)
        await self.worker.call(lambda: self._ensure_loaded(model), model=model.id)
        return model

    async def open_stream(self, request: ChatRequest) -> ChatStream:
        """Start generating; errors before the first token (unknown model, prompt too long)
        raise here, so the caller can still answer with a proper status."""
        admitted = await self._admitted(request)
        events = self.worker.run(lambda cancelled: _engine_faults(
            self._generate(admitted, cancelled)), model=admitted.model.id)
        return ChatStream(await anext(events), events)

    async def complete(self, request: ChatRequest) -> Completion:
        """The stream, assembled: streaming and not always agree."""
        events: list[ToolEvent] = []
        logprobs: list[TokenLogprob] = []
        reasoning: list[str] = []
        start: StreamStart | None = None
        async with contextlib.aclosing(await self.open_stream(request)) as stream:
            async for event in stream:
                if isinstance(event, StreamStart):
                    start = event
                elif isinstance(event, TextDelta):
                    events.append(ContentPiece(event.text))
                    logprobs.extend(event.logprobs)
                elif isinstance(event, ReasoningDelta):
                    reasoning.append(event.text)
                elif isinstance(event, CallStarted | CallArguments):
                    events.append(event)
                elif start is not None:
                    reply = assemble(events)
                    return Completion(
                        id=start.id, created=start.created, model=start.model, text=reply.content,
                        finish_reason=event.finish_reason, usage=event.usage,
                        tool_calls=reply.calls, ttft=start.ttft, stop_sequence=event.stop_sequence,
                        logprobs=tuple(logprobs) if request.sampling.logprobs else None,
                        reasoning="".join(reasoning) if reasoning else None)
        raise EngineFailure("generation ended without finishing")

    async def count_tokens(self, request: ChatRequest) -> int:
        """The prompt tokens `request` would take on its model, counted by the model's own
        template and tokenizer (images included), with no generation: the model is made the
        loaded one, queued like any request."""
        admitted = await self._admitted(request)
        return await self.worker.call(lambda: self._prepare(admitted).prompt.token_count,
                                      model=admitted.model.id)

    async def _admitted(self, request: ChatRequest) -> _Admitted:
        """Everything checked and fetched before a request queues for the engine: the tools
        named, the sampling ranges, the model, what depends on its family (a settled model is
        decided on now, before anything loads; a guessed one once fetched), the images."""
        _check_tools(request)
        model = await asyncio.to_thread(self._admit, request)
        plan = _decide(request, model) if model.settled else None
        images = await self._load_images(request, model)
        self.last_used = self.clock.now()
        return _Admitted(request, model, plan, images)

    def _prepare(self, admitted: _Admitted) -> _Prepared:
        """On the generation thread: the model loaded, the decision taken if it waited for the
        fetched config, the token ids checked against it, the prompt rendered and counted, and
        where it leaves the model's reasoning (a switch the template lacks is refused here)."""
        request = admitted.request
        model = self._ensure_loaded(admitted.model)
        plan = admitted.plan or _decide(request, model)
        # token ids and counts against the model now loaded: MLX does not bounds-check them
        check_token_ids(request.sampling, self.engine.vocab_size)
        markers = profile_named(model.family).thinking if request.prompt is None else None
        if markers is None and request.thinking:
            raise _no_switch(model, request, "its family writes no reasoning block")
        lead = plan.lead  # the assistant turn's forced start: a tool opener, or the text continued
        source = PromptInput(plan.messages, plan.template_tools, admitted.images, lead,
                             raw=request.prompt,
                             thinking=None if markers is None else request.thinking is not False)
        prompt = self.engine.prepare(source)
        start = reply_start(prompt.tail, markers)
        if start is Start.MAYBE and not prompt.thinking_switch:
            start = Start.CLOSED  # a template without a thinking mode (Qwen3-VL Instruct)
        if markers is not None:
            _check_switch(model, request, start, prompt.thinking_switch)
            if start is Start.OPEN and lead:  # a forced start is answer: close the block
                prompt = self.engine.prepare(attrs.evolve(
                    source, assistant_prefix=f"{markers[1]}\n\n{lead}"))
                start = Start.CLOSED
        return _Prepared(model, plan, prompt, markers, start)

    def _admit(self, request: ChatRequest) -> ModelRef:
        """The model-independent sampling checks (a walk over a response_format schema is
        proportional to the request), then the model: both in a worker thread, before queueing."""
        check_sampling(request.sampling)
        return self.catalog.resolve(request.model)

    def _ensure_loaded(self, model: ModelRef) -> ModelRef:
        """Swap `model` in unless it is the loaded one; return the loaded reference."""
        loaded = self.engine.loaded
        if loaded is not None and loaded.id == model.id:
            return loaded
        started = self.clock.now()
        self._loading = True
        try:
            self.engine.load(self.catalog.fetch(model))
        finally:
            self._loading = False
        self.metrics.swap(model.id, self.clock.now() - started)
        return self.engine.loaded or model

    async def _load_images(self, request: ChatRequest, model: ModelRef) -> tuple[LoadedImage, ...]:
        """Decode or fetch every image part concurrently; the first failure cancels the rest.
        Whether the model takes images is decided elsewhere (`_decide`), once."""
        jobs = _image_parts(request)
        if not jobs:
            return ()
        if self.images is None:  # a service built without a loader serves text only
            raise _no_vision(model, jobs[0][0])
        cap = self.limits.max_images
        if len(jobs) > cap:
            raise InvalidRequest(
                f"The request has {len(jobs)} images; this server takes at most {cap} "
                "per request (--max-images).", param=jobs[cap][0], code="invalid_value")
        loader = self.images
        tasks = [asyncio.ensure_future(loader.load(url, param=param)) for param, url in jobs]
        try:
            return tuple(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    def _generate(self, admitted: _Admitted,
                  cancelled: Cancelled) -> Generator[StreamEvent | AwaitStep, Any, None]:
        request = admitted.request
        prepared = self._prepare(admitted)
        model, plan, prompt = prepared.model, prepared.plan, prepared.prompt
        params = attrs.evolve(request.sampling, max_tokens=self._completion_budget(
            prompt, request.sampling, model, "messages" if request.prompt is None else "prompt"),
            tool_grammar=plan.grammar)
        run = _Run(plan, self.ids.tool_call_id, params.stop, keep_stops=params.include_stop)
        if prepared.start is not Start.CLOSED or prompt.thinking_switch:  # a thinking template
            run.reasoning_tokens = 0
        if prepared.markers and prepared.start is not Start.CLOSED and not plan.lead:
            run.splitting = ReasoningSplitter(prepared.markers, prepared.start)
        run.echo = request.prompt if request.echo and request.prompt is not None else ""
        started = self.clock.now()
        row = self.engine.admit(prompt, params)
        first_token: float | None = None
        try:
            # parked until the row's prefill is done and its first token is in
            first = yield AwaitStep(row, max(1, prompt.token_count - prompt.cached_tokens))
            first_token = self.clock.now()
            yield from self._answer(run, model, prompt, first_token - started, first, row)
        finally:  # ended, or closed for a client that left (or for a row that failed)
            # a finished answer is kept (the client may hang up as soon as it has the last
            # event: that is no cancellation); one cut short by a client that left is not
            gone = not run.ended and cancelled()
            if gone:
                self.metrics.cancelled(model.id, "prefill" if first_token is None else "decode")
            self.engine.release(row, keep=not gone)

    def _answer(
        self, run: _Run, model: ModelRef, prompt: PreparedPrompt, ttft: float,
        first: GenerationStep, row: RowId,
    ) -> Generator[StreamEvent | AwaitStep, GenerationStep, None]:
        yield StreamStart(id=self.ids.completion_id(), created=int(self.clock.now()),
                          model=model.id, ttft=ttft, prompt_tokens=prompt.token_count,
                          cached_tokens=prompt.cached_tokens)
        decoding = self.clock.now()
        if run.echo:  # the prompt, returned in front of the reply (never a stop, never a call)
            yield TextDelta(run.echo)
        yield from run.take(run.parser.feed(run.plan.prefix))  # the model's output continues it
        produced, reason = yield from run.consume(first, row)
        if not run.done:
            yield from run.drain()
        yield from run.take([], final=True)
        reason = FinishReason.TOOL_CALLS if run.calls else reason
        if run.parser.rejected:  # counted; returned to the client as content, never lost
            log.warning("%s: %d tool call block(s) rejected", model.id, run.parser.rejected)
        self.metrics.generation(model.id, prompt_tokens=prompt.token_count,
                                cached_tokens=prompt.cached_tokens, completion_tokens=produced,
                                ttft=ttft, decode_seconds=self.clock.now() - decoding)
        run.ended = True
        matched = run.matcher.matched
        stop_sequence = matched if reason is FinishReason.STOP and matched in run.user_stops \
            else None
        yield StreamEnd(reason, Usage(prompt.token_count, produced, prompt.cached_tokens,
                                      run.reasoning_tokens),
                        rejected_calls=run.parser.rejected, stop_sequence=stop_sequence)

    def _completion_budget(
        self, prompt: PreparedPrompt, sampling: SamplingParams, model: ModelRef, param: str
    ) -> int:
        room = model.context_length - prompt.token_count
        wanted = sampling.max_tokens
        if room <= 0 or (wanted is not None and wanted > room):
            asked = f" plus {wanted} completion tokens" if wanted is not None else ""
            raise ContextTooLong(
                f"This model's maximum context length is {model.context_length} tokens. "
                f"The request has {prompt.token_count} prompt tokens{asked}. "
                f"Shorten the {param} or lower max_tokens.",
                param=param,
            )
        return wanted if wanted is not None else min(room, self.limits.max_tokens_cap)


class _Run:
    """One generation's text pipeline: stop sequences, then tool-call parsing; token log
    probabilities ride on the next content delta."""

    def __init__(self, plan: ToolPlan, new_id: Callable[[], str], stops: tuple[str, ...], *,
                 keep_stops: bool = False) -> None:
        self.plan = plan
        self.user_stops = frozenset(stops)  # the request's own: the ones a client may be told of
        # the request's stops end the text when it asks to keep them; internal ones never do
        self.matcher = StopMatcher((*stops, *plan.stops), kept=stops if keep_stops else ())
        self.parser: ToolCallStreamer = (plan.format.streamer(plan.tools, new_id) if plan.format
                                         else PlainText())
        self.calls = 0
        self.done = False  # parallel_tool_calls false: the first call ends the turn
        self.ended = False  # the final event is out
        self.echo = ""  # a raw prompt returned in front of the reply (legacy completions' echo)
        self.logprobs: list[TokenLogprob] = []
        # reasoning split from the answer while it may still come (None: never, or no longer)
        self.splitting: ReasoningSplitter | None = None
        self.reasoning_tokens: int | None = None  # None: the family writes no reasoning

    def consume(
        self, step: GenerationStep, row: RowId,
    ) -> Generator[StreamEvent | AwaitStep, GenerationStep, tuple[int, FinishReason]]:
        """Feed the row's engine steps through the pipeline, from its first one, parking on the
        row for each next one; return (tokens produced, finish reason)."""
        produced = 0
        while True:
            produced += step.token is not None
            text = step.text
            if (splitter := self.splitting) is not None:  # the answer alone reaches stops, calls
                was_inside = splitter.inside
                thought, text = splitter.feed(text)
                if was_inside or splitter.inside:  # a reasoning token: no log probability
                    self.reasoning_tokens = (self.reasoning_tokens or 0) + (step.token is not None)
                    step = attrs.evolve(step, logprob=None)
                if thought:
                    yield ReasoningDelta(thought)
                if splitter.settled:
                    self.splitting = None
            if step.logprob is not None:
                self.logprobs.append(step.logprob)
            text, stopped = self.matcher.feed(text)
            yield from self.take(self.parser.feed(text))
            if stopped or step.finish_reason is not None or self.done:
                return produced, FinishReason.STOP if stopped else step.finish_reason or FinishReason.LENGTH
            step = yield AwaitStep(row)

    def drain(self) -> Generator[StreamEvent, None, None]:
        """What the pipeline holds back once generation has ended: reasoning, then the answer
        through the stop sequences and the call parser."""
        text = ""
        if self.splitting is not None:
            thought, text = self.splitting.finish()
            self.splitting = None
            if thought:
                yield ReasoningDelta(thought)
        text, stopped = self.matcher.feed(text)
        rest = "" if stopped else self.matcher.flush()
        yield from self.take(self.parser.feed(text + rest) + self.parser.finish())

    def take(self, events: list[ToolEvent], final: bool = False) -> Generator[StreamEvent, None, None]:
        if final and self.logprobs:  # log probabilities of tokens no content followed
            yield TextDelta("", tuple(self.logprobs))
            self.logprobs.clear()
        for event in events:
            if isinstance(event, ContentPiece):
                if event.text and not self.done:
                    yield TextDelta(event.text, tuple(self.logprobs))
                    self.logprobs.clear()
                continue
            if self.plan.single_call and event.index > 0:
                continue  # NOTE: a second call in the same block is dropped, not turned to text
            self.calls += isinstance(event, CallStarted)
            yield event
            self.done = self.plan.single_call and isinstance(event, CallArguments)


@attrs.frozen
class _Prepared:
    """A request ready to generate from: its model loaded, its plan, its prompt, and where the
    reply starts with respect to the family's reasoning markers (None: it has none)."""

    model: ModelRef
    plan: ToolPlan
    prompt: PreparedPrompt
    markers: tuple[str, str] | None
    start: Start


@attrs.frozen
class _Admitted:
    """A request past the checks that need no engine, with what they found."""

    request: ChatRequest
    model: ModelRef
    plan: ToolPlan | None  # None: decided once the model's config is fetched
    images: tuple[LoadedImage, ...]


def generation_worker(engine: InferenceEngine, metrics: Metrics,
                      policy: QueuePolicy | None = None) -> GenerationWorker:
    """The generation thread, told at construction what it reports: which model is loaded (it
    schedules around swaps), requests dropped unrun, and the queue depth as it changes."""
    return GenerationWorker(policy, loaded=lambda: _loaded_id(engine), step=engine.step,
                            prefill_chunk=lambda: engine.prefill_chunk,
                            dropped=lambda model: metrics.cancelled(model or "", "queued"),
                            depth=metrics.queue_depth, stepped=metrics.step)


def _loaded_id(engine: InferenceEngine) -> str | None:
    loaded = engine.loaded
    return loaded.id if loaded else None


def _decide(request: ChatRequest, model: ModelRef) -> ToolPlan:
    """What depends on the model's family and vision, decided once they are known (settled, or
    read from the fetched files): how tools are offered, and whether images may come. A raw
    prompt has neither: no template renders it, nothing in it is parsed as a call."""
    if request.prompt is not None:
        return ToolPlan(format=None, tools=(), messages=(), template_tools=())
    plan = plan_tools(request, model)
    images = _image_parts(request)
    if images and not model.vision:
        raise _no_vision(model, images[0][0])
    return plan


def _image_parts(request: ChatRequest) -> list[tuple[str, str]]:
    """(param, url) of each image part, in order."""
    return [(f"messages[{i}].content[{j}].image_url.url", part.url)
            for i, message in enumerate(request.messages)
            for j, part in enumerate(message.content) if isinstance(part, ImagePart)]


def _no_vision(model: ModelRef, param: str) -> InvalidRequest:
    return InvalidRequest(f"The model {model.id!r} has no vision: it cannot take images. "
                          "Send text only, or choose a vision model.",
                          param=param, code="unsupported_value")


def _check_switch(model: ModelRef, request: ChatRequest, start: Start, switch: bool) -> None:
    """Reasoning asked on or off where the template cannot do it is refused, never ignored."""
    if switch or request.thinking is None:
        return
    if request.thinking is False and start is Start.OPEN:
        raise _no_switch(model, request, "its chat template always opens a reasoning block")
    if request.thinking is True and start is not Start.OPEN:
        raise _no_switch(model, request, "its chat template has no thinking mode")


def _no_switch(model: ModelRef, request: ChatRequest, why: str) -> InvalidRequest:
    state = "on" if request.thinking else "off"
    return InvalidRequest(
        f"The model {model.id!r} cannot turn its reasoning {state}: {why}. Send the request "
        f"without '{request.thinking_param}', or choose another model.",
        param=request.thinking_param, code="unsupported_value")


def _check_tools(request: ChatRequest) -> None:
    choice = request.tool_choice
    names = {tool.name for tool in request.tools}
    if choice.mode is ToolChoiceMode.REQUIRED and not names:
        raise InvalidRequest("tool_choice 'required' needs at least one tool in 'tools'.",
                             param="tool_choice")
    if choice.mode is ToolChoiceMode.FUNCTION and choice.function not in names:
        raise InvalidRequest(f"tool_choice names function {choice.function!r}, which is not in "
                             "'tools'.", param="tool_choice")


def _engine_faults(
    events: Generator[StreamEvent | AwaitStep, Any, None],
) -> Generator[StreamEvent | AwaitStep, Any, None]:
    """Whatever an engine raises that is not a domain error is a server fault: say so plainly.
    That includes BaseExceptions other than the interpreter's own control flow: a native
    extension's panic (pyo3's PanicException) is one, and must not escape as something no
    handler expects."""
    try:
        yield from events
    except (DomainError, GeneratorExit, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise EngineFailure(f"Inference failed: {type(exc).__name__}: {exc}") from exc


class ChatStream:
    """A started generation's events, the first already in hand (what failed before it was
    raised by open_stream). It notes the start and the end as they pass, so the access log
    reads the model, usage and time to first token here: nothing else watches the stream.
    Closing it ends the worker job: a waiting one is dropped, a running one sees cancelled."""

    def __init__(self, first: StreamEvent, rest: AsyncGenerator[StreamEvent, None]) -> None:
        self._first: StreamEvent | None = first
        self._rest = rest
        self.start: StreamStart | None = None
        self.end: StreamEnd | None = None

    @property
    def model(self) -> str | None:
        return self.start.model if self.start else None

    @property
    def usage(self) -> Usage | None:
        return self.end.usage if self.end else None

    @property
    def ttft(self) -> float | None:
        return self.start.ttft if self.start else None

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        event, self._first = self._first, None
        if event is None:
            event = await anext(self._rest)
        if isinstance(event, StreamStart):
            self.start = event
        elif isinstance(event, StreamEnd):
            self.end = event
        return event

    async def aclose(self) -> None:
        await self._rest.aclose()
