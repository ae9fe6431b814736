"""What the server answers: completions, stream events and token accounting."""

from __future__ import annotations

import enum

import attrs

from .conversation import ToolCall
from .tool_types import CallArguments, CallStarted


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


@attrs.frozen
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    # of the completion tokens, those spent reasoning; None: no reasoning could be split out
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@attrs.frozen
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None


@attrs.frozen
class TokenLogprob:
    """A generated token's log probability, with the most likely alternatives if asked for."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None
    top: tuple[TopLogprob, ...] = ()


@attrs.frozen
class GenerationStep:
    """One token from an engine: the text it adds (may be empty mid-character). A step without
    a `token` only flushes text or reports the finish; it is not counted as generated."""

    text: str
    token: int | None = None
    finish_reason: FinishReason | None = None
    logprob: TokenLogprob | None = None  # only when the request asked for logprobs


@attrs.frozen
class StreamStart:
    id: str
    created: int
    model: str
    # seconds from the generation's start (queued, loaded and the prompt prepared) to its first
    # token, on the service's clock: the one figure the metrics and the access log both report.
    # Known when the stream starts (it starts after the prefill), so a stream cut short has it
    ttft: float | None = None
    prompt_tokens: int | None = None  # known once the prompt is prepared (Anthropic's message_start)
    cached_tokens: int = 0


@attrs.frozen
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens since the previous delta


@attrs.frozen
class ReasoningDelta:
    """Reasoning text (a thinking model's block), split from the answer."""

    text: str


@attrs.frozen
class StreamEnd:
    finish_reason: FinishReason
    usage: Usage
    rejected_calls: int = 0  # call blocks that did not parse or fit: returned as content
    # which of the request's own stop sequences ended the reply (finish_reason stop), if one did:
    # Anthropic's `stop_sequence`. A model family's own stops (end-of-turn markers) are not named
    stop_sequence: str | None = None


StreamEvent = StreamStart | TextDelta | ReasoningDelta | CallStarted | CallArguments | StreamEnd


@attrs.frozen
class Completion:
    id: str
    created: int
    model: str
    text: str | None
    finish_reason: FinishReason
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None  # None: not requested
    ttft: float | None = None  # as StreamStart.ttft
    stop_sequence: str | None = None  # as StreamEnd.stop_sequence
    reasoning: str | None = None  # the reasoning split from the answer (None: there was none)
