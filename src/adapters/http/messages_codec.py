"""Anthropic's Messages API on the wire <-> the domain's chat request and completion.

The body is validated by openapi.yaml's `CreateMessageRequest` first (the schemas follow
Anthropic's API reference and the `anthropic` SDK's types), so the translation below reads a
shape it knows. Nothing here decides anything the chat endpoint does not: tools, images, stops
and sampling all land on the same `ChatRequest`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ...domain.completion import Completion, FinishReason, Usage
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
from ...domain.reasoning import keep_reasoning
from .validation import RequestValidator

# Anthropic request fields this server does not implement: accepted only at their no-op value
# (openapi.yaml declares the same), else 400 naming them.
UNSUPPORTED_PARAMETERS: Mapping[str, tuple[Any, ...]] = {
    "container": (),
    "inference_geo": (),
    "diagnostics": (),
    "speed": ("standard",),
    "mcp_servers": ([],),
}
# what shapes a prompt: the fields of count_tokens' request that the translation reads
COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "output_config",
                "context_management")
CLEAR_THINKING = "clear_thinking_20251015"  # the one context edit served (the others: 400)
DEFAULT_THINKING_TURNS = 1  # Anthropic's default `keep` for clear_thinking
TOOL_ERROR_PREFIX = "Error: "  # a tool_result with is_error: the model reads that the call failed


@attrs.frozen
class MessagesTurn:
    """A Messages request, translated: the chat request, and whether the answer leaves the
    reasoning's text out (`thinking.display: "omitted"`)."""

    request: ChatRequest
    omit_thinking: bool = False


class MessagesCodec:
    def __init__(self, spec: dict[str, Any]) -> None:
        self._create = RequestValidator(spec, "CreateMessageRequest",
                                        unsupported=UNSUPPORTED_PARAMETERS, only_with={})
        self._count = RequestValidator(spec, "CountMessageTokensRequest",
                                       unsupported=UNSUPPORTED_PARAMETERS, only_with={})

    def create_request(self, body: Any) -> MessagesTurn:
        _refuse_context_edits(body)
        self._create.validate(body)
        display = (body.get("thinking") or {}).get("display")
        return MessagesTurn(to_request(body), omit_thinking=display == "omitted")

    def count_request(self, body: Any) -> ChatRequest:
        """Only the fields count_tokens takes are read (the others are not validated there)."""
        _refuse_context_edits(body)
        self._count.validate(body)
        return to_request({name: body[name] for name in COUNT_FIELDS if name in body})


def to_request(body: Mapping[str, Any]) -> ChatRequest:
    tools = tuple(ToolSpec(tool["name"], tool.get("description") or "", tool["input_schema"])
                  for tool in body.get("tools") or ())
    choice = body.get("tool_choice") or {}
    messages = to_messages(body.get("system"), body["messages"])
    for edit in (body.get("context_management") or {}).get("edits") or ():
        messages = keep_reasoning(messages, _thinking_turns(edit.get("keep")))
    return ChatRequest(
        model=body["model"],
        messages=messages,
        sampling=SamplingParams(
            temperature=body.get("temperature"), top_p=body.get("top_p"),
            top_k=_integer(body.get("top_k")) or None, max_tokens=_integer(body.get("max_tokens")),
            stop=tuple(body.get("stop_sequences") or ()),
            response_format=_response_format(body.get("output_config"))),
        tools=tools,
        tool_choice=_tool_choice(choice, bool(tools)),
        parallel_tool_calls=not choice.get("disable_parallel_tool_use", False),
        stream=bool(body.get("stream")),
        thinking=_thinking(body.get("thinking"), body.get("max_tokens")),
        thinking_param="thinking",
        # Anthropic's prefill: a final assistant message of text is where the reply goes on
        continue_final=bool(messages) and messages[-1].role is Role.ASSISTANT, continue_param=None,
    )


def _refuse_context_edits(body: Any) -> None:
    """Context edits other than clearing old thinking rewrite the conversation in ways this
    server does not (clearing tool results, compaction): refused by name, before the schema's
    generic complaint."""
    config = body.get("context_management") if isinstance(body, dict) else None
    edits = config.get("edits") if isinstance(config, dict) else None
    for i, edit in enumerate(edits if isinstance(edits, list) else ()):
        kind = edit.get("type") if isinstance(edit, dict) else None
        if isinstance(kind, str) and kind != CLEAR_THINKING:
            shown = kind if len(kind) <= 64 else kind[:64] + "..."
            param = f"context_management.edits[{i}].type"
            raise InvalidRequest(
                f"Invalid value for '{param}': context edit '{shown}' is not supported; this "
                f"server applies '{CLEAR_THINKING}' only.", param=param, code="unsupported_value")


def _thinking_turns(keep: Any) -> int:
    """clear_thinking's `keep`: the assistant turns whose reasoning stays ("all": every one)."""
    if keep == "all" or (isinstance(keep, dict) and keep.get("type") == "all"):
        return sys.maxsize
    if isinstance(keep, dict):
        return int(keep["value"])
    return DEFAULT_THINKING_TURNS


def _thinking(config: Mapping[str, Any] | None, max_tokens: float | None) -> bool | None:
    """`enabled` turns reasoning on (refused where the model cannot think), `disabled` off;
    `adaptive` ("the model decides") and absent leave it to the model: its template's default
    (on for a thinking template; a model without a thinking mode simply does not think).
    `display` only shapes the answer (MessagesTurn), and `output_config.effort` has no effect:
    these models have no degrees of effort. A budget is honoured only where it cannot bind (at
    least `max_tokens`): this server does not cut reasoning short at a budget, so a smaller one
    is refused rather than ignored."""
    if not config or config["type"] == "adaptive":
        return None
    budget = config.get("budget_tokens")
    if config["type"] == "enabled" and max_tokens is not None and budget is not None \
            and budget < max_tokens:
        raise InvalidRequest(
            f"'thinking.budget_tokens' ({budget}) is below max_tokens ({int(max_tokens)}): this "
            "server cannot stop the reasoning at a budget. Set budget_tokens to at least "
            "max_tokens (reasoning and answer then share max_tokens), or disable thinking.",
            param="thinking.budget_tokens", code="unsupported_value")
    return bool(config["type"] == "enabled")


def _integer(value: float | None) -> int | None:
    """JSON Schema's integers include 7.0; the sampler wants an int."""
    return None if value is None else int(value)


def to_messages(system: str | Sequence[Mapping[str, Any]] | None,
                messages: Sequence[Mapping[str, Any]]) -> tuple[Message, ...]:
    """The conversation: one system message first (`system`, then the text of every
    `role: "system"` message, as Claude Code sends them, in order), then the turns. A user turn's
    `tool_result` blocks become tool messages, in place; its other blocks a user message."""
    system_texts = [_text(system)] if system else []
    turns: list[Message] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            system_texts.append(_text(content))
        elif role == "assistant":
            turns.append(_assistant(content))
        else:
            turns.extend(_user(content))
    head = (Message(Role.SYSTEM, (TextPart("\n\n".join(system_texts)),)),) if system_texts else ()
    return head + tuple(turns)


def _text(content: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "\n\n".join(block["text"] for block in content if block.get("type") == "text")


def _assistant(content: str | Sequence[Mapping[str, Any]]) -> Message:
    if isinstance(content, str):
        return Message(Role.ASSISTANT, (TextPart(content),))
    parts: list[Part] = [TextPart(block["text"]) for block in content if block["type"] == "text"]
    calls = tuple(ToolCall(block["id"], block["name"], json.dumps(block["input"]))
                  for block in content if block["type"] == "tool_use")
    # the model's own reasoning, sent back (its signature is this server's empty one); an
    # omitted one (empty text) and redacted_thinking have nothing readable and are dropped
    thoughts = [block["thinking"] for block in content
                if block["type"] == "thinking" and block["thinking"]]
    return Message(Role.ASSISTANT, tuple(parts), tool_calls=calls,
                   reasoning="\n\n".join(thoughts) if thoughts else None)


def _user(content: str | Sequence[Mapping[str, Any]]) -> list[Message]:
    if isinstance(content, str):
        return [Message(Role.USER, (TextPart(content),))]
    out: list[Message] = []
    parts: list[Part] = []
    for block in content:
        if block["type"] == "tool_result":
            if parts:
                out.append(Message(Role.USER, tuple(parts)))
                parts = []
            out.append(_tool_result(block))
        elif block["type"] == "image":
            parts.append(ImagePart(_image_url(block["source"])))
        else:
            parts.append(TextPart(block["text"]))
    if parts:
        out.append(Message(Role.USER, tuple(parts)))
    return out


def _tool_result(block: Mapping[str, Any]) -> Message:
    content = block.get("content")
    text = _text(content) if content is not None else ""
    if block.get("is_error"):
        text = TOOL_ERROR_PREFIX + text
    return Message(Role.TOOL, (TextPart(text),), tool_call_id=block["tool_use_id"])


def _image_url(source: Mapping[str, Any]) -> str:
    """A base64 source as a data: URI, a url source as its URL: the same loader, limits and
    address policy as the chat endpoint's image_url parts."""
    if source["type"] == "base64":
        return f"data:{source['media_type']};base64,{source['data']}"
    return str(source["url"])


def _tool_choice(choice: Mapping[str, Any], has_tools: bool) -> ToolChoice:
    kind = choice.get("type")
    if kind is None:
        return ToolChoice(ToolChoiceMode.AUTO if has_tools else ToolChoiceMode.NONE)
    if kind == "any":
        return ToolChoice(ToolChoiceMode.REQUIRED)
    if kind == "tool":
        return ToolChoice(ToolChoiceMode.FUNCTION, choice["name"])
    return ToolChoice(ToolChoiceMode(kind))  # auto, none


def _response_format(config: Mapping[str, Any] | None) -> ResponseFormat | None:
    output_format = (config or {}).get("format")
    if not output_format:
        return None
    return ResponseFormat(output_format.get("schema") or None)


# -- answers -----------------------------------------------------------------------------------

def message_id(completion_id: str) -> str:
    """Anthropic's `msg_` id for the domain's completion id (same random part)."""
    return "msg_" + completion_id.rsplit("-", 1)[-1]


def tool_use_id(call_id: str) -> str:
    """Anthropic's `toolu_` id for the domain's `call_` id (same random part). A client sends it
    back as it is, and it is only ever used as given (matching a tool_result to its call)."""
    return "toolu_" + call_id.split("_", 1)[-1]


def stop_reason(finish_reason: FinishReason, stop_sequence: str | None) -> str:
    if finish_reason is FinishReason.TOOL_CALLS:
        return "tool_use"
    if finish_reason is FinishReason.LENGTH:
        return "max_tokens"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def usage_json(usage: Usage) -> dict[str, int]:
    """Anthropic's accounting: `input_tokens` are the prompt tokens *not* read from the prefix
    cache; `cache_read_input_tokens` those that were; nothing is ever written at a price."""
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens,
            "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": 0}


def tool_input(arguments: str) -> Any:
    """A call's arguments (a JSON object as text: the domain checked it) as Anthropic's `input`."""
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return {}


def message_json(completion: Completion, omit_thinking: bool = False) -> dict[str, Any]:
    """The answer; with `omit_thinking` the thinking block is there with an empty text (the
    model reasoned, and `usage.output_tokens` counts it, but the text is not returned)."""
    content: list[dict[str, Any]] = []
    if completion.reasoning:
        content.append({"type": "thinking",
                        "thinking": "" if omit_thinking else completion.reasoning,
                        "signature": ""})
    if completion.text:
        content.append({"type": "text", "text": completion.text})
    content += [{"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
                 "input": tool_input(call.arguments)} for call in completion.tool_calls]
    return {"id": message_id(completion.id), "type": "message", "role": "assistant",
            "model": completion.model, "content": content,
            "stop_reason": stop_reason(completion.finish_reason, completion.stop_sequence),
            "stop_sequence": completion.stop_sequence, "usage": usage_json(completion.usage)}
