"""How one request uses tools: which format parses the output, what the template sees, and what
the assistant turn is forced to start with. The model's family profile decides all of it."""

from __future__ import annotations

import attrs

from .conversation import ChatRequest, Message, ToolChoiceMode, ToolGrammar, ToolSpec
from .errors import InvalidRequest
from .families import profile_named, tool_families
from .models import ModelRef
from .tool_calls import ContentPiece, ToolCallFormat, ToolEvent


@attrs.frozen
class ToolPlan:
    format: ToolCallFormat | None  # None: no tools offered, nothing parsed
    tools: tuple[ToolSpec, ...]  # the tools calls are validated against
    messages: tuple[Message, ...]  # the conversation as the model's template should see it
    template_tools: tuple[ToolSpec, ...]  # tools the template renders itself (Qwen)
    prefix: str = ""  # forced start of the assistant turn (tool_choice required / named)
    stops: tuple[str, ...] = ()  # internal stop sequences, never returned
    single_call: bool = False  # parallel_tool_calls: false
    grammar: ToolGrammar | None = None  # calls constrained while written (None: checked after)


def plan_tools(request: ChatRequest, model: ModelRef) -> ToolPlan:
    """Decide how `request` offers its tools to `model`; refuses tools a model cannot call."""
    profile = profile_named(model.family)
    offered = request.tool_choice.mode is not ToolChoiceMode.NONE and bool(request.tools)
    fmt = profile.tool_format if offered else None
    if offered and fmt is None:
        raise _no_tool_format(model)
    tools = request.tools if fmt else ()
    messages, template_tools = profile.prompt(request.messages, tools)
    grammar = _grammar(request, fmt) if fmt else None
    prefix = fmt.forced_prefix(request.tool_choice) if fmt else ""
    if grammar is not None and grammar.active_from_start:  # the grammar writes the call itself
        prefix = grammar.trigger + grammar.lead
    return ToolPlan(format=fmt, tools=tools, messages=messages, template_tools=template_tools,
                    prefix=prefix, stops=profile.extra_stops if fmt else (),
                    single_call=fmt is not None and not request.parallel_tool_calls,
                    grammar=grammar)


def _grammar(request: ChatRequest, fmt: ToolCallFormat) -> ToolGrammar | None:
    """How calls are constrained: from the forced opener on (required, or a named function: that
    tool alone), or lazily from the moment the model writes the opener (auto). None when the
    format has no grammar for these tools (a schema it cannot enforce: calls are checked after
    they are written, as without a grammar), and when response_format constrains the output
    already: its JSON schema wins, the request is served as without a grammar."""
    choice = request.tool_choice
    if request.sampling.response_format is not None:
        return None
    tools = request.tools
    if choice.mode is ToolChoiceMode.FUNCTION:
        tools = tuple(tool for tool in tools if tool.name == choice.function)
    text = fmt.call_grammar(tools, request.parallel_tool_calls) if tools else None
    if text is None:
        return None
    return ToolGrammar(text, trigger=fmt.opener, lead="\n",
                       active_from_start=choice.mode is not ToolChoiceMode.AUTO,
                       single=not request.parallel_tool_calls)


def _no_tool_format(model: ModelRef) -> InvalidRequest:
    """The 400 for tools offered to a family without a tool-call convention; it names the
    families that have one, from the registry."""
    titles = [profile.title for profile in tool_families()]
    choice = ", ".join(titles[:-1]) + " or " + titles[-1] if len(titles) > 1 else "".join(titles)
    return InvalidRequest(
        f"The model {model.id!r} has no tool-calling format this server knows. Send the "
        "request without tools, with "
        f"tool_choice 'none', or choose a {choice} model.", param="tools",
        code="unsupported_value")


class PlainText:
    """The streamer for output that carries no tool calls: everything is content."""

    rejected = 0

    def feed(self, text: str) -> list[ToolEvent]:
        return [ContentPiece(text)] if text else []

    def finish(self) -> list[ToolEvent]:
        return []
