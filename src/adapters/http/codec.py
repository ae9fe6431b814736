"""The one place wire DTOs meet domain types: JSON body -> ChatRequest, Completion -> JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cattrs

from ...domain.completion import Completion, TokenLogprob, Usage
from ...domain.conversation import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    Role,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from ...domain.errors import InvalidRequest
from ...domain.models import ModelInfo
from .dto import (
    ChatCompletionDTO,
    ChatCompletionRequestDTO,
    ChoiceDTO,
    CompletionTokensDetailsDTO,
    ContentDTO,
    FunctionCallDTO,
    MessageDTO,
    ModelDTO,
    ModelListDTO,
    PromptTokensDetailsDTO,
    ResponseMessageDTO,
    TextPartDTO,
    ToolCallDTO,
    UsageDTO,
    make_converter,
)
from .validation import CHAT_UNSUPPORTED_PARAMETERS, RequestValidator


class ChatCodec:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.converter = make_converter()
        self._validator = RequestValidator(spec, "CreateChatCompletionRequest",
                                           unsupported=CHAT_UNSUPPORTED_PARAMETERS)

    def chat_request(self, body: object) -> ChatRequest:
        if isinstance(body, dict):
            _refuse_template_kwargs(body.get("chat_template_kwargs"))
        self._validator.validate(body)
        try:
            dto = self.converter.structure(body, ChatCompletionRequestDTO)
        except cattrs.BaseValidationError as exc:
            raise InvalidRequest("; ".join(cattrs.transform_error(exc))) from exc
        return _to_request(dto)

    def completion(self, completion: Completion) -> dict[str, Any]:
        message = ResponseMessageDTO(
            content=completion.text,
            tool_calls=[_tool_call_dto(call) for call in completion.tool_calls] or None,
            reasoning_content=completion.reasoning)
        dto = ChatCompletionDTO(
            id=completion.id, created=completion.created, model=completion.model,
            choices=[ChoiceDTO(index=0, message=message,
                               finish_reason=completion.finish_reason.value,
                               logprobs=logprobs_json(completion.logprobs))],
            usage=usage_dto(completion.usage))
        result: dict[str, Any] = self.converter.unstructure(dto)
        return result

    def models(self, models: list[ModelInfo], loaded: str | None) -> dict[str, Any]:
        dto = ModelListDTO(data=[model_dto(model, loaded) for model in models])
        result: dict[str, Any] = self.converter.unstructure(dto)
        return result

    def model(self, model: ModelInfo, loaded: str | None) -> dict[str, Any]:
        result: dict[str, Any] = self.converter.unstructure(model_dto(model, loaded))
        return result


def logprobs_json(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """OpenAI's `choices[].logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if logprobs is None:
        return None
    return {"content": [{"token": lp.token, "logprob": lp.logprob, "bytes": _bytes(lp.bytes),
                         "top_logprobs": [{"token": top.token, "logprob": top.logprob,
                                           "bytes": _bytes(top.bytes)} for top in lp.top]}
                        for lp in logprobs], "refusal": None}


def _bytes(value: tuple[int, ...] | None) -> list[int] | None:
    return list(value) if value is not None else None


def model_dto(model: ModelInfo, loaded: str | None) -> ModelDTO:
    return ModelDTO(id=model.id, created=model.created, owned_by=model.owned_by,
                    aliases=list(model.aliases), loaded=model.id == loaded)


def usage_dto(usage: Usage) -> UsageDTO:
    details = (CompletionTokensDetailsDTO(usage.reasoning_tokens)
               if usage.reasoning_tokens is not None else None)
    return UsageDTO(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                    prompt_tokens_details=PromptTokensDetailsDTO(usage.cached_tokens),
                    completion_tokens_details=details)


def _tool_call_dto(call: ToolCall) -> ToolCallDTO:
    return ToolCallDTO(id=call.id, function=FunctionCallDTO(call.name, call.arguments))


def _to_request(dto: ChatCompletionRequestDTO) -> ChatRequest:
    max_tokens = dto.max_completion_tokens if dto.max_completion_tokens is not None \
        else dto.max_tokens
    stop = (dto.stop,) if isinstance(dto.stop, str) else tuple(dto.stop or ())
    tools = tuple(ToolSpec(tool.function.name, tool.function.description or "",
                           tool.function.parameters or {}) for tool in dto.tools or ())
    return ChatRequest(
        model=dto.model,
        messages=tuple(_to_message(message) for message in dto.messages),
        sampling=_to_sampling(dto, max_tokens, stop),
        tools=tools,
        tool_choice=_to_tool_choice(dto.tool_choice, bool(tools)),
        parallel_tool_calls=dto.parallel_tool_calls is not False,
        stream=bool(dto.stream),
        include_usage=bool(dto.stream_options and dto.stream_options.include_usage),
        continue_final=bool(dto.continue_final_message),
        **_thinking(dto),
    )


def top_k_limit(value: int | None) -> int | None:
    """`top_k` as the sampler takes it: 0 and -1 (SGLang's and vLLM's "no limit", which
    sglang-router sends on /v1/responses) are no limit."""
    return None if value is None or value <= 0 else value


# the one chat template kwarg a client may set: the others would reach the template unchecked
TEMPLATE_KWARGS = ("enable_thinking",)
THINKING_OFF_EFFORT = "none"  # reasoning_effort that turns reasoning off; any other turns it on


def _refuse_template_kwargs(kwargs: object) -> None:
    if not isinstance(kwargs, dict):
        return  # the schema names the type
    for name in kwargs:
        if name not in TEMPLATE_KWARGS:
            raise InvalidRequest(
                f"Unsupported parameter: 'chat_template_kwargs.{name}' is not supported by this "
                "server (only 'enable_thinking' is).", param=f"chat_template_kwargs.{name}",
                code="unsupported_parameter")


def _thinking(dto: ChatCompletionRequestDTO) -> dict[str, Any]:
    """Reasoning on or off, from `chat_template_kwargs.enable_thinking` (vLLM's, llama-server's)
    or `reasoning_effort` ("none" is off; minimal, low, medium and high are on: these models
    have no degrees). Both given and disagreeing: refused."""
    switch = (dto.chat_template_kwargs or {}).get("enable_thinking")
    effort = None if dto.reasoning_effort is None else dto.reasoning_effort != THINKING_OFF_EFFORT
    if switch is not None and effort is not None and switch != effort:
        raise InvalidRequest(
            f"'chat_template_kwargs.enable_thinking' ({str(switch).lower()}) contradicts "
            f"'reasoning_effort' ({dto.reasoning_effort!r}); send one of them.",
            param="chat_template_kwargs.enable_thinking", code="invalid_value")
    if switch is not None:
        return {"thinking": switch, "thinking_param": "chat_template_kwargs.enable_thinking"}
    return {"thinking": effort, "thinking_param": "reasoning_effort"}


def _to_sampling(dto: ChatCompletionRequestDTO, max_tokens: int | None,
                 stop: tuple[str, ...]) -> SamplingParams:
    return SamplingParams(
        temperature=dto.temperature, top_p=dto.top_p, top_k=top_k_limit(dto.top_k), min_p=dto.min_p,
        seed=dto.seed, max_tokens=max_tokens, stop=stop, repetition_penalty=dto.repetition_penalty,
        ignore_eos=bool(dto.ignore_eos), include_stop=bool(dto.no_stop_trim),
        presence_penalty=dto.presence_penalty or None, frequency_penalty=dto.frequency_penalty or None,
        logit_bias={int(token): bias for token, bias in (dto.logit_bias or {}).items()},
        logprobs=bool(dto.logprobs), top_logprobs=dto.top_logprobs or 0,
        response_format=_to_response_format(dto.response_format))


def _to_response_format(value: dict[str, Any] | None) -> ResponseFormat | None:
    kind = (value or {}).get("type", "text")
    if kind == "json_object":
        return ResponseFormat()
    if kind == "json_schema":
        schema = (value or {}).get("json_schema", {}).get("schema")
        return ResponseFormat(schema if isinstance(schema, dict) else {"type": "object"})
    return None


def _to_message(dto: MessageDTO) -> Message:
    return Message(
        role=Role(dto.role),
        content=_to_parts(dto.content),
        name=dto.name,
        tool_calls=tuple(ToolCall(call.id, call.function.name, call.function.arguments)
                         for call in dto.tool_calls or ()),
        tool_call_id=dto.tool_call_id,
        reasoning=dto.reasoning_content,
    )


def _to_parts(content: ContentDTO) -> tuple[Part, ...]:
    if content is None:
        return ()
    if isinstance(content, str):
        return (TextPart(content),)
    return tuple(TextPart(part.text) if isinstance(part, TextPartDTO)
                 else ImagePart(part.image_url.url, part.image_url.detail) for part in content)


def _to_tool_choice(choice: object, has_tools: bool) -> ToolChoice:
    if choice is None:
        return ToolChoice(ToolChoiceMode.AUTO if has_tools else ToolChoiceMode.NONE)
    if isinstance(choice, str):
        return ToolChoice(ToolChoiceMode(choice))
    return ToolChoice(ToolChoiceMode.FUNCTION, choice.function.name)  # type: ignore[attr-defined]
