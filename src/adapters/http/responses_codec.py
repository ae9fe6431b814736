"""OpenAI's Responses API on the wire <-> the domain's chat request and completion.

The body is validated by openapi.yaml's `CreateResponseRequest` first (its schemas are OpenAI's,
trimmed to what this server supports), so the translation below reads a shape it knows. Nothing
here decides anything the chat endpoint does not: tools, images, stops and sampling all land on
the same `ChatRequest`. What is the Responses API's own: the conversation as items (messages,
function calls and their outputs), continued from a stored response (`previous_response_id`),
and the response object echoing the request.

Tools: `function` tools, and `namespace` groups of them (Codex CLI sends its sub-agent tools so),
flattened into the model's tool list under their own names; a call of one comes back as a
`function_call` item carrying its `namespace`, as OpenAI's does. Hosted tools (web search, file
search, code interpreter...) are refused with 400 naming `tools[i].type`: this server runs none.

Reasoning: a thinking model's reasoning is a `reasoning` output item before the answer, its text
in `content` (`reasoning_text`; `summary` stays empty: there is no summariser). With `include:
["reasoning.encrypted_content"]` the item also carries `encrypted_content`, the reasoning text
encoded (not encrypted) so that a stateless client (Codex sends `store: false`) can send the item
back and this server reads it again. A reasoning item in the input becomes the reasoning of the
assistant turn after it.
"""

from __future__ import annotations

import base64
import binascii
import json
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
from ...domain.errors import InvalidRequest, ResponseNotFound
from ...domain.ports import ResponseStore
from .codec import top_k_limit
from .validation import RequestValidator

# Responses request fields this server does not implement: accepted only at their no-op value
# (openapi.yaml declares the same), else 400 naming them.
UNSUPPORTED_PARAMETERS: Mapping[str, tuple[Any, ...]] = {
    "background": (False,),
    "conversation": (),
    "prompt": (),
    "context_management": (),
    "truncation": ("disabled",),
    "service_tier": ("auto", "default"),
    "top_logprobs": (0,),
    "moderation": (),
    "prompt_cache_retention": (),
    "stream_options": ({}, {"include_obfuscation": False}),
    "priority": (0,),  # SGLang's request priority (sglang-router sends 0): no priorities here
}
SERVED_TOOL_TYPES = ("function", "namespace")
THINKING_OFF_EFFORT = "none"  # every other reasoning effort turns a thinking model's reasoning on
ENCRYPTED_REASONING = "reasoning.encrypted_content"
_REASONING_BLOB = "mlx-server:v1:"  # what starts the encrypted_content this server writes
_ID_SHOWN = 80  # characters of a client's id quoted back in an error message


@attrs.frozen
class ResponsesTurn:
    """A Responses request, translated: the chat request, and what its response object echoes
    and stores."""

    request: ChatRequest
    echo: Mapping[str, Any]  # the request's fields, as the response object repeats them
    items: tuple[Any, ...]  # the conversation's items up to this turn (previous ones first)
    namespaces: Mapping[str, str]  # tool name -> the namespace it was sent in
    store: bool
    encrypted_reasoning: bool = False  # include: reasoning.encrypted_content


class ResponsesCodec:
    def __init__(self, spec: dict[str, Any], store: ResponseStore) -> None:
        self._create = RequestValidator(spec, "CreateResponseRequest",
                                        unsupported=UNSUPPORTED_PARAMETERS, only_with={})
        self._store = store

    def create_request(self, body: Any) -> ResponsesTurn:
        """Validate and translate `body`; runs in a worker thread (read_json), so the stored
        conversation of `previous_response_id` is read here too."""
        if isinstance(body, dict):
            _refuse_hosted_tools(body.get("tools"))
            _refuse_summaries(body.get("reasoning"))
        self._create.validate(body)
        inputs = _input_items(body["input"])
        if all(item.get("type") == "reasoning" for item in inputs):  # openapi.yaml: `contains`
            raise InvalidRequest("'input' holds no message, call or call output to answer (only "
                                 "reasoning items).", param="input", code="invalid_value")
        previous = body.get("previous_response_id")
        items = (*(self._previous_items(previous) if previous is not None else ()),
                 *inputs)
        tools, namespaces = _tools(body.get("tools") or ())
        return ResponsesTurn(request=to_request(body, items, tools), echo=_echo(body),
                             items=items, namespaces=namespaces, store=body.get("store") is not False,
                             encrypted_reasoning=ENCRYPTED_REASONING in (body.get("include") or ()))

    def _previous_items(self, response_id: str) -> tuple[Any, ...]:
        record = self._store.get(response_id)
        if record is None:
            raise ResponseNotFound(f"Previous response with id '{shown(response_id)}' not found "
                                   "(never stored, deleted, or dropped from this server's "
                                   "in-memory store).", param="previous_response_id",
                                   code="previous_response_not_found")
        stored = json.loads(record)
        return (*stored["input"], *stored["response"]["output"])


def shown(identifier: str) -> str:
    return identifier if len(identifier) <= _ID_SHOWN else identifier[:_ID_SHOWN] + "..."


def _refuse_hosted_tools(tools: Any) -> None:
    """Tools this server cannot run, refused by name before the schema's generic complaint."""
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind not in SERVED_TOOL_TYPES:
            raise InvalidRequest(
                f"Tool type '{shown(kind)}' is not supported: this server runs no hosted tools. "
                "Send 'function' tools (or 'namespace' groups of them) only.",
                param=f"tools[{i}].type", code="unsupported_value")
        inner = tool.get("tools") if kind == "namespace" else None
        for j, member in enumerate(inner if isinstance(inner, list) else ()):
            member_kind = member.get("type") if isinstance(member, dict) else None
            if isinstance(member_kind, str) and member_kind != "function":
                raise InvalidRequest(
                    f"Tool type '{shown(member_kind)}' is not supported in a namespace: only "
                    "'function' tools are.", param=f"tools[{i}].tools[{j}].type",
                    code="unsupported_value")


def _refuse_summaries(reasoning: Any) -> None:
    """A summary this server cannot write, refused by name before the schema's generic complaint."""
    for field in ("summary", "generate_summary"):
        kind = reasoning.get(field) if isinstance(reasoning, dict) else None
        if kind in ("concise", "detailed"):
            raise InvalidRequest(
                f"'reasoning.{field}' {kind!r} is not supported: this server has no summariser "
                "(a reasoning item's content holds the reasoning itself). Send 'auto' or null.",
                param=f"reasoning.{field}", code="unsupported_value")


def _input_items(value: str | Sequence[Any]) -> tuple[Any, ...]:
    """The request's `input` as items: a string is one user message."""
    if isinstance(value, str):
        return ({"type": "message", "role": "user", "content": value},)
    return tuple(value)


def _tools(tools: Sequence[Mapping[str, Any]]) -> tuple[tuple[ToolSpec, ...], dict[str, str]]:
    """Function tools, with the members of each namespace flattened among them. A member whose
    name another tool has would make a call ambiguous: refused."""
    names = {tool["name"] for tool in tools if tool["type"] == "function"}
    specs: list[ToolSpec] = []
    namespaces: dict[str, str] = {}
    for i, tool in enumerate(tools):
        if tool["type"] == "function":
            specs.append(_spec(tool))
            continue
        for j, member in enumerate(tool["tools"]):
            if member["name"] in names:
                raise InvalidRequest(
                    f"Tool name '{member['name']}' of namespace '{tool['name']}' is also the name "
                    "of another tool: a call of it would be ambiguous.",
                    param=f"tools[{i}].tools[{j}].name", code="invalid_value")
            names.add(member["name"])
            namespaces[member["name"]] = tool["name"]
            specs.append(_spec(member))
    return tuple(specs), namespaces


def _spec(tool: Mapping[str, Any]) -> ToolSpec:
    return ToolSpec(tool["name"], tool.get("description") or "", tool.get("parameters") or {})


def to_request(body: Mapping[str, Any], items: Sequence[Any],
               tools: tuple[ToolSpec, ...]) -> ChatRequest:
    return ChatRequest(
        model=body["model"],
        messages=to_messages(body.get("instructions"), items),
        sampling=SamplingParams(
            temperature=body.get("temperature"), top_p=body.get("top_p"),
            top_k=top_k_limit(_integer(body.get("top_k"))), min_p=body.get("min_p"),
            repetition_penalty=body.get("repetition_penalty"),
            max_tokens=_integer(body.get("max_output_tokens")),
            response_format=_response_format(body.get("text"))),
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), bool(tools)),
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
        stream=bool(body.get("stream")),
        thinking=_thinking(body.get("reasoning")),
        thinking_param="reasoning.effort",
    )


def _thinking(reasoning: Mapping[str, Any] | None) -> bool | None:
    """`reasoning.effort` as the chat endpoint's `reasoning_effort`: `none` off, any other on
    (these models have no degrees); absent: the template's own default."""
    effort = (reasoning or {}).get("effort")
    return None if effort is None else effort != THINKING_OFF_EFFORT


def _integer(value: float | None) -> int | None:
    """JSON Schema's integers include 7.0; the sampler wants an int."""
    return None if value is None else int(value)


def to_messages(instructions: str | None, items: Sequence[Mapping[str, Any]]) -> tuple[Message, ...]:
    """`instructions` first, as a system message (never carried over from a previous response),
    then the items in order: messages as they are (developer ones as the chat endpoint takes
    them), a run of function_call items joined to the assistant turn they follow, each
    function_call_output a tool message, and a reasoning item the reasoning of the assistant turn
    after it."""
    out: list[Message] = [Message(Role.SYSTEM, (TextPart(instructions),))] if instructions else []
    thought: str | None = None  # a reasoning item's text, until the assistant turn it precedes
    for item in items:
        kind = item.get("type", "message")
        if kind == "reasoning":
            thought = "\n\n".join(filter(None, (thought, reasoning_text(item)))) or None
            continue
        if kind == "function_call":
            call = ToolCall(item["call_id"], item["name"], item["arguments"])
            if out and out[-1].role is Role.ASSISTANT and thought is None:
                out[-1] = attrs.evolve(out[-1], tool_calls=(*out[-1].tool_calls, call))
            else:
                out.append(Message(Role.ASSISTANT, tool_calls=(call,), reasoning=thought))
        elif kind == "function_call_output":
            out.append(Message(Role.TOOL, (TextPart(_text(item["output"])),),
                               tool_call_id=item["call_id"]))
        else:
            role = Role(item["role"])
            out.append(Message(role, _parts(item["content"]),
                               reasoning=thought if role is Role.ASSISTANT else None))
        if out[-1].role is Role.ASSISTANT:
            thought = None
    return tuple(out)


def reasoning_text(item: Mapping[str, Any]) -> str:
    """A reasoning item's text: its content, else its summary, else its encrypted_content if this
    server wrote it (another server's is unreadable here: no text)."""
    for field in ("content", "summary"):
        if texts := [part["text"] for part in item.get(field) or ()]:
            return "".join(texts)
    blob = item.get("encrypted_content") or ""
    if blob.startswith(_REASONING_BLOB):
        try:
            return base64.b64decode(blob[len(_REASONING_BLOB):], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def encrypted(text: str) -> str:
    """A reasoning item's encrypted_content: its text, encoded for this server to read back."""
    return _REASONING_BLOB + base64.b64encode(text.encode()).decode()


def _text(content: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


def _parts(content: str | Sequence[Mapping[str, Any]]) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    return tuple(ImagePart(part["image_url"], part.get("detail") or "auto")
                 if part["type"] == "input_image" else TextPart(part["text"]) for part in content)


def _tool_choice(choice: str | Mapping[str, Any] | None, has_tools: bool) -> ToolChoice:
    if choice is None:
        return ToolChoice(ToolChoiceMode.AUTO if has_tools else ToolChoiceMode.NONE)
    if isinstance(choice, str):
        return ToolChoice(ToolChoiceMode(choice))
    return ToolChoice(ToolChoiceMode.FUNCTION, choice["name"])


def _response_format(text: Mapping[str, Any] | None) -> ResponseFormat | None:
    output_format = (text or {}).get("format") or {}
    kind = output_format.get("type", "text")
    if kind == "json_object":
        return ResponseFormat()
    if kind == "json_schema":
        return ResponseFormat(output_format["schema"])
    return None


def _echo(body: Mapping[str, Any]) -> dict[str, Any]:
    text = dict(body.get("text") or {})
    text.setdefault("format", {"type": "text"})
    text.setdefault("verbosity", "medium")
    return {
        "instructions": body.get("instructions"), "metadata": body.get("metadata") or {},
        "temperature": body.get("temperature"), "top_p": body.get("top_p"),
        "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store") is not False, "text": text,
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"),
                      "summary": (body.get("reasoning") or {}).get("summary")},
        "truncation": "disabled",
        "background": False, "service_tier": "default", "top_logprobs": 0,
        "user": body.get("user"), "prompt_cache_key": body.get("prompt_cache_key"),
        "safety_identifier": body.get("safety_identifier"),
        "max_tool_calls": body.get("max_tool_calls"),
    }


# -- answers -----------------------------------------------------------------------------------

def response_id(completion_id: str) -> str:
    """The `resp_` id for the domain's completion id (same random part)."""
    return "resp_" + completion_id.rsplit("-", 1)[-1]


def item_id(prefix: str, resp_id: str, index: int) -> str:
    """An output item's id: `msg_`/`fc_`, the response's random part, the item's index."""
    return f"{prefix}_{resp_id.removeprefix('resp_')}_{index}"


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's accounting: `input_tokens` is the whole prompt, the cached part of it named."""
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
            "total_tokens": usage.total_tokens}


def message_item(item: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item, "type": "message", "status": status, "role": "assistant",
            "content": [text_part(text)]}


def reasoning_item(turn: ResponsesTurn, item: str, text: str, status: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item, "type": "reasoning", "status": status, "summary": [],
                           "content": [{"type": "reasoning_text", "text": text}]}
    if turn.encrypted_reasoning:
        out["encrypted_content"] = encrypted(text)
    return out


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item: str, call: ToolCall, status: str, namespaces: Mapping[str, str]) -> dict[str, Any]:
    out = {"id": item, "type": "function_call", "status": status, "call_id": call.id,
           "name": call.name, "arguments": call.arguments}
    if call.name in namespaces:
        out["namespace"] = namespaces[call.name]
    return out


def status_of(reason: FinishReason) -> tuple[str, dict[str, str] | None]:
    """The response's status and incomplete_details for how generation ended."""
    if reason is FinishReason.LENGTH:
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def response_json(turn: ResponsesTurn, resp_id: str, created: int, model: str, status: str,
                  output: list[dict[str, Any]], usage: Usage | None, *,
                  incomplete: dict[str, str] | None = None,
                  error: dict[str, str] | None = None) -> dict[str, Any]:
    return {"id": resp_id, "object": "response", "created_at": created, "status": status,
            "model": model, "output": output, "error": error, "incomplete_details": incomplete,
            "usage": usage_json(usage) if usage is not None else None, **turn.echo}


def completion_output(turn: ResponsesTurn, resp_id: str, completion: Completion,
                      status: str) -> list[dict[str, Any]]:
    """A whole completion's output items: its reasoning, its text as one message, then its
    calls."""
    output: list[dict[str, Any]] = []
    if completion.reasoning:
        output.append(reasoning_item(turn, item_id("rs", resp_id, 0), completion.reasoning,
                                     "completed" if completion.text or completion.tool_calls
                                     else status))
    if completion.text:
        output.append(message_item(item_id("msg", resp_id, len(output)), completion.text, status))
    output += [call_item(item_id("fc", resp_id, len(output)), call, "completed", turn.namespaces)
               for call in completion.tool_calls]
    return output


def record(turn: ResponsesTurn, response: Mapping[str, Any]) -> bytes:
    """What the store keeps of a response: the object, and the conversation it answered (for a
    later `previous_response_id`; its instructions are not carried over, as OpenAI's are not)."""
    return json.dumps({"response": response, "input": list(turn.items)}, ensure_ascii=False,
                      separators=(",", ":")).encode()
