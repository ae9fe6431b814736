"""What a client asks for: messages, tools and sampling parameters, free of any wire format."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs


class Role(enum.StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@attrs.frozen
class TextPart:
    text: str


@attrs.frozen
class ImagePart:
    url: str
    detail: str = "auto"


Part = TextPart | ImagePart


@attrs.frozen
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text, exactly as OpenAI carries it


@attrs.frozen
class Message:
    role: Role
    content: tuple[Part, ...] = ()
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    reasoning: str | None = None  # an assistant turn's reasoning, sent back by the client

    @property
    def text(self) -> str:
        """The message's text parts joined, images left out."""
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(part for part in self.content if isinstance(part, ImagePart))


@attrs.frozen
class ToolSpec:
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = attrs.field(factory=dict)


class ToolChoiceMode(enum.StrEnum):
    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    FUNCTION = "function"


@attrs.frozen
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    function: str | None = None


@attrs.frozen
class ResponseFormat:
    """Constrained output: any JSON object, or JSON valid against `schema`."""

    schema: Mapping[str, Any] | None = None  # None: any JSON object


@attrs.frozen
class ToolGrammar:
    """Tool calls constrained while they are written: once the model's output ends with `trigger`
    (the family's call opener), the output must continue with `lead` and then match `grammar`
    (an llguidance Lark grammar whose `start` is one call block of the offered tools, up to and
    including the closer); then it is free again. `active_from_start`: the prompt already ends
    with trigger + lead (tool_choice required / named), so the constraint holds from the first
    generated token. `single`: after one block, never again (parallel_tool_calls false)."""

    grammar: str
    trigger: str
    lead: str = "\n"
    active_from_start: bool = False
    single: bool = False


@attrs.frozen
class SamplingParams:
    temperature: float | None = None  # None: the model's own default
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None  # None: up to the context left, capped by the server
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Mapping[int, float] = attrs.field(factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: ResponseFormat | None = None
    tool_grammar: ToolGrammar | None = None  # set by the use case from its tool plan, never by a client
    ignore_eos: bool = False  # generate past the model's end-of-sequence tokens (up to max_tokens)
    include_stop: bool = False  # a matched stop sequence stays at the end of the text


@attrs.frozen
class ChatRequest:
    """A chat, or with `prompt` set a legacy text completion: that text is the model's input as
    it is (no chat template, no tools, no images; `messages` empty), and `echo` puts it in front
    of the reply. `thinking` switches a thinking model's reasoning where its template can."""

    model: str
    messages: tuple[Message, ...]
    sampling: SamplingParams = SamplingParams()
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True
    stream: bool = False
    include_usage: bool = False
    prompt: str | None = None
    echo: bool = False
    # reasoning asked on (True) or off (False), or the template's own default (None), and the
    # request field that asked (named by a refusal)
    thinking: bool | None = None
    thinking_param: str = "reasoning_effort"
    # the final message is an assistant turn the reply continues (a prefill), not an earlier turn;
    # `continue_param` names the request field that asked (None: the API's own rule, Anthropic's)
    continue_final: bool = False
    continue_param: str | None = "continue_final_message"
