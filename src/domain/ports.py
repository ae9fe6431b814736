"""The ports: what the domain needs from the outside world, as structural protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from .completion import GenerationStep
from .conversation import Message, SamplingParams, ToolSpec
from .errors import DomainError
from .models import ModelInfo, ModelRef


@attrs.frozen
class PreparedPrompt:
    """A prompt rendered by the model's own template and tokenised, ready to generate from."""

    token_count: int
    payload: object = None  # engine-private: token ids, pixel values, template text
    cached_tokens: int = 0
    # the rendered template's last characters (before any assistant prefix): where it leaves
    # the model, e.g. inside a reasoning block its generation prompt opened
    tail: str = ""
    thinking_switch: bool = False  # whether the template reads `enable_thinking`


@attrs.frozen
class LoadedImage:
    """An image ready for a model: decoded, oriented, RGB. `key` is the sha256 of its bytes, so the
    same image seen again (the next turn) is recognised without decoding it twice."""

    key: str
    image: object = attrs.field(eq=False, repr=False)  # the adapter's decoded image (PIL, RGB)


class ImageLoader(Protocol):
    async def load(self, url: str, *, param: str) -> LoadedImage:
        """Decode a data: URI or fetch an http(s) URL. Raises InvalidImage or InvalidImageUrl,
        naming `param` (e.g. `messages[2].content[1].image_url.url`)."""


@attrs.frozen
class PromptInput:
    """What an engine renders into a prompt: the conversation, the tools its template should
    show, the images in order of appearance, and text the assistant turn must start with.
    With `raw` set (a legacy completion) the prompt is that text exactly, tokenised with the
    tokenizer's own special tokens (a BOS where it adds one) and no chat template; the
    conversation is then empty. `thinking`, when set, is passed to the template as
    `enable_thinking`."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    images: tuple[LoadedImage, ...] = ()
    assistant_prefix: str = ""
    raw: str | None = None
    thinking: bool | None = None  # the template's `enable_thinking`; None: not passed at all


RowId = int  # one request's sequence in the engine's running batch


@attrs.frozen
class RowProgress:
    """What one step did for one row: prompt tokens prefilled, and/or its next token (the first
    one ends its prefill), or the error that ended it (the row is then already released)."""

    row: RowId
    prefilled: int = 0  # prompt tokens through the model this step
    step: GenerationStep | None = None  # the row's new token; None while it still prefills
    error: DomainError | None = None  # this row failed (its own fault or the request's)


@attrs.frozen
class StepReport:
    """One engine step: each row's progress, and what the step cost (for /metrics)."""

    rows: tuple[RowProgress, ...]
    decoded: int = 0  # rows that produced a token by a batched decode (not their prefill)
    prefill_tokens: int = 0  # prompt tokens prefilled, all rows together
    seconds: float = 0.0  # wall time of the step


class InferenceEngine(Protocol):
    """Runs one model at a time, many requests' sequences ("rows") decoding together. Every
    method is called from the single generation thread, between steps."""

    @property
    def loaded(self) -> ModelRef | None:
        """The model in memory, if any."""

    @property
    def vocab_size(self) -> int | None:
        """The loaded model's vocabulary as the sampler sees it: the width of its output logits
        (which may exceed the tokenizer's own count: padded embedding rows). Token ids a request
        names (`logit_bias`) must lie in [0, vocab_size). None when no model is loaded."""

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per prefill pass this engine prefers (the scheduler's prefill budget
        per step unless configured)."""

    def load(self, model: ModelRef) -> None:
        """Load `model`, releasing the current one first. Raises ModelUnavailable on failure:
        found before the release (its files, its size), the current model stays loaded;
        found by the load itself, no model is loaded. Only called with no row admitted."""

    def unload(self) -> None:
        """Drop every reference to the current model and free its memory. Only called with no
        row admitted."""

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        """Render `prompt` with the loaded model's own template (or take its `raw` text as it is)
        and count its tokens exactly. Raises InvalidRequest when the template rejects the
        conversation."""

    def admit(self, prompt: PreparedPrompt, params: SamplingParams) -> RowId:
        """Add a row for `prompt`, sampled by `params` alone (its own seed, temperature,
        processors, ...), whatever else runs beside it. Sets up the row's state only (a JSON
        schema is compiled here: InvalidRequest); its prompt is prefilled by later steps. The
        row's first `prompt.cached_tokens` come from the prefix cache."""

    def step(self, prefill: Mapping[RowId, int]) -> StepReport:
        """One decode step for every decoding row, plus, for each row named in `prefill`, up to
        that many of its prompt tokens prefilled (a row whose prompt completes gets its first
        token). A row ends with `finish_reason` set on its step (EOS: stop; its max_tokens:
        length) and is not decoded again; it stays admitted until released.
        A row's own failure comes back as that row's `error`, the others go on. Raises
        EngineUnavailable when the step failed as a whole: every row is then released."""

    def release(self, row: RowId, *, keep: bool) -> None:
        """Remove a row now (between steps); unknown or already released rows are ignored.
        keep: save its KV state (prompt and generated tokens) to the prefix cache."""


class ModelCatalog(Protocol):
    """Knows which models exist, under which names, and whether they are here."""

    def resolve(self, name: str) -> ModelRef:
        """Map an alias, repo id or allowed local path to a model, without network access.
        Raises ModelNotFound when `name` cannot name a model (a path not allowed included),
        never anything else for a string, however hostile."""

    def fetch(self, model: ModelRef) -> ModelRef:
        """Make `model` loadable: its files local (downloaded if missing and allowed, converted if
        needed). Returns it with `source` a local path and `family`/`context_length` read from
        its config. Raises ModelUnavailable (offline, hub unreachable) or ModelNotFound."""

    def list_models(self) -> Sequence[ModelInfo]:
        """Every model a client may name, aliases included."""

    def is_local(self, model: ModelRef) -> bool:
        """Whether `model` loads without any network access."""


class ResponseStore(Protocol):
    """Responses kept for retrieval and continuation (the Responses API's `store`): opaque
    records under their ids, bounded in count and bytes, the oldest dropped first. Callable from
    any thread (the event loop and the body decoders' worker threads)."""

    def put(self, key: str, record: bytes) -> bool:
        """Keep `record` under `key`, dropping the oldest records beyond the bounds. False when
        the record alone is larger than the whole budget (it is then not kept)."""

    def get(self, key: str) -> bytes | None:
        """The record under `key`; None when never kept, deleted or dropped."""

    def delete(self, key: str) -> bool:
        """Drop the record under `key`; False when there was none."""


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""


class IdSource(Protocol):
    def completion_id(self) -> str: ...

    def tool_call_id(self) -> str: ...


class Metrics(Protocol):
    """What the use case reports as it works; an adapter exposes it (Prometheus)."""

    def generation(self, model: str, *, prompt_tokens: int, cached_tokens: int,
                   completion_tokens: int, ttft: float, decode_seconds: float) -> None:
        """One finished generation: token counts, time to first token, time spent decoding."""

    def swap(self, model: str, seconds: float) -> None:
        """A model was loaded (after the previous one was released)."""

    def cancelled(self, model: str, phase: str) -> None:
        """A client went away before its generation finished: while its request was `queued`,
        in `prefill` (no token yet) or in `decode`."""

    def queue_depth(self, waiting: int) -> None:
        """Requests waiting for the model right now."""

    def step(self, rows: int, report: StepReport) -> None:
        """One engine step done: the rows in the batch after it, and what it did."""


class NoMetrics:
    def generation(self, model: str, *, prompt_tokens: int, cached_tokens: int,
                   completion_tokens: int, ttft: float, decode_seconds: float) -> None:
        pass

    def swap(self, model: str, seconds: float) -> None:
        pass

    def cancelled(self, model: str, phase: str) -> None:
        pass

    def queue_depth(self, waiting: int) -> None:
        pass

    def step(self, rows: int, report: StepReport) -> None:
        pass
