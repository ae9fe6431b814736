"""Wire types of the OpenAI chat API as frozen attrs classes, and the one converter for them."""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

# --- requests -------------------------------------------------------------------------------


@attrs.frozen
class TextPartDTO:
    text: str
    type: str = "text"


@attrs.frozen
class ImageUrlDTO:
    url: str
    detail: str = "auto"


@attrs.frozen
class ImagePartDTO:
    image_url: ImageUrlDTO
    type: str = "image_url"


PartDTO = TextPartDTO | ImagePartDTO
ContentDTO = str | list[PartDTO] | None


@attrs.frozen
class FunctionCallDTO:
    name: str
    arguments: str


@attrs.frozen
class ToolCallDTO:
    id: str
    function: FunctionCallDTO
    type: str = "function"


@attrs.frozen
class MessageDTO:
    role: str
    content: ContentDTO = None
    name: str | None = None
    tool_calls: list[ToolCallDTO] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


@attrs.frozen
class FunctionDTO:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@attrs.frozen
class ToolDTO:
    function: FunctionDTO
    type: str = "function"


@attrs.frozen
class NamedFunctionDTO:
    name: str


@attrs.frozen
class NamedToolChoiceDTO:
    function: NamedFunctionDTO
    type: str = "function"


@attrs.frozen
class StreamOptionsDTO:
    include_usage: bool | None = None


@attrs.frozen
class ChatCompletionRequestDTO:
    model: str
    messages: list[MessageDTO]
    stream: bool | None = None
    stream_options: StreamOptionsDTO | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    tools: list[ToolDTO] | None = None
    tool_choice: str | NamedToolChoiceDTO | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    ignore_eos: bool | None = None  # SGLang's and vLLM's; sglang-router sends them all
    no_stop_trim: bool | None = None
    continue_final_message: bool | None = None


# --- responses ------------------------------------------------------------------------------


@attrs.frozen
class ResponseMessageDTO:
    content: str | None
    refusal: str | None = None
    role: str = "assistant"
    tool_calls: list[ToolCallDTO] | None = attrs.field(default=None, metadata={"omit_if_default": True})
    reasoning_content: str | None = attrs.field(default=None, metadata={"omit_if_default": True})


@attrs.frozen
class ChoiceDTO:
    index: int
    message: ResponseMessageDTO
    finish_reason: str
    logprobs: dict[str, Any] | None = None


@attrs.frozen
class PromptTokensDetailsDTO:
    cached_tokens: int


@attrs.frozen
class CompletionTokensDetailsDTO:
    reasoning_tokens: int


@attrs.frozen
class UsageDTO:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetailsDTO
    completion_tokens_details: CompletionTokensDetailsDTO | None = attrs.field(
        default=None, metadata={"omit_if_default": True})


@attrs.frozen
class ChatCompletionDTO:
    id: str
    created: int
    model: str
    choices: list[ChoiceDTO]
    usage: UsageDTO
    object: str = "chat.completion"
    system_fingerprint: str = "mlx-server"


@attrs.frozen
class ModelDTO:
    id: str
    created: int
    owned_by: str
    object: str = "model"
    aliases: list[str] = attrs.field(factory=list)
    loaded: bool = False


@attrs.frozen
class ModelListDTO:
    data: list[ModelDTO]
    object: str = "list"


@attrs.frozen
class ErrorDTO:
    message: str
    type: str
    param: str | None
    code: str | None


@attrs.frozen
class ErrorEnvelopeDTO:
    error: ErrorDTO


def make_converter() -> cattrs.Converter:
    """One converter: requests structure leniently (unknown keys ignored); response fields marked
    `omit_if_default` are left out when unset, as OpenAI leaves them out."""
    converter = cattrs.Converter(forbid_extra_keys=False)
    converter.register_structure_hook(ContentDTO, _structure_content(converter))
    converter.register_structure_hook(str | list[str] | None, _structure_stop)
    converter.register_structure_hook(str | NamedToolChoiceDTO | None, _structure_tool_choice(converter))
    for cls in (ResponseMessageDTO, UsageDTO):
        converter.register_unstructure_hook(cls, _omit_marked_defaults(converter, cls))
    return converter


def _structure_content(converter: cattrs.Converter) -> Any:
    def structure(value: Any, _: Any) -> ContentDTO:
        if value is None or isinstance(value, str):
            return value
        parts: list[PartDTO] = []
        for part in value:
            if part.get("type") == "image_url":
                parts.append(converter.structure(part, ImagePartDTO))
            else:
                parts.append(converter.structure(part, TextPartDTO))
        return parts

    return structure


def _structure_stop(value: Any, _: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    return [str(item) for item in value]


def _structure_tool_choice(converter: cattrs.Converter) -> Any:
    def structure(value: Any, _: Any) -> str | NamedToolChoiceDTO | None:
        if value is None or isinstance(value, str):
            return value
        return converter.structure(value, NamedToolChoiceDTO)

    return structure


def _omit_marked_defaults(converter: cattrs.Converter, cls: type) -> Any:
    overrides: dict[str, Any] = {field.name: override(omit_if_default=True)
                 for field in attrs.fields(cls) if field.metadata.get("omit_if_default")}
    return make_dict_unstructure_fn(cls, converter, **overrides)
