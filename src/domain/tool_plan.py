"""How one request uses tools: which format parses the output, what the template sees, and what
the assistant turn is forced to start with. The model's family profile decides all of it."""

from __future__ import annotations

import attrs

from .conversation import ChatRequest, Message, Role, ToolChoiceMode, ToolGrammar, ToolSpec
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
    continued: str = ""  # the final assistant message's text, which the reply continues

    @property
    def lead(self) -> str:
        """What the assistant turn is made to start with (at most one of the two is set)."""
        return self.prefix or self.continued


def plan_tools(request: ChatRequest, model: ModelRef) -> ToolPlan:
    """Decide how `request` offers its tools to `model`; refuses tools a model cannot call."""
    profile = profile_named(model.family)
    offered = request.tool_choice.mode is not ToolChoiceMode.NONE and bool(request.tools)
    fmt = profile.tool_format if offered else None
    if offered and fmt is None:
        raise _no_tool_format(model)
    tools = request.tools if fmt else ()
    conversation, continued = continuation(request)  # continued None: nothing is continued
    messages, template_tools = profile.prompt(conversation, tools)
    grammar = _grammar(request, fmt) if fmt else None
    prefix = fmt.forced_prefix(request.tool_choice) if fmt else ""
    if grammar is not None and grammar.active_from_start:  # the grammar writes the call itself
        prefix = grammar.trigger + grammar.lead
    if continued is not None and prefix:
        raise _cannot_continue(request, "tool_choice forces the reply to start with a tool call")
    return ToolPlan(format=fmt, tools=tools, messages=messages, template_tools=template_tools,
                    prefix=prefix, stops=profile.extra_stops if fmt else (),
                    single_call=fmt is not None and not request.parallel_tool_calls,
                    grammar=grammar, continued=continued or "")


def continuation(request: ChatRequest) -> tuple[tuple[Message, ...], str | None]:
    """The conversation the template renders, and the text the reply continues: with
    `continue_final`, the final message is an assistant turn of text, rendered as the start of
    the reply (HF's `continue_final_message`, Anthropic's prefill); the reply holds only what
    the model adds. Where the rule is the API's own (`continue_param` None: Anthropic), a final
    message that is not such a turn stays an earlier turn. The text is None when nothing is
    continued."""
    messages = request.messages
    if not request.continue_final:
        return messages, None
    final = messages[-1] if messages else None
    if final is None or final.role is not Role.ASSISTANT or final.tool_calls or final.images:
        if request.continue_param is None:
            return messages, None
        what = "a message with tool calls" if final is not None and final.tool_calls else (
            f"a {final.role.value} message" if final is not None else "absent")
        raise InvalidRequest(
            f"'{request.continue_param}' continues the final message, which must be an assistant "
            f"message of text; it is {what}.", param=request.continue_param, code="invalid_value")
    if request.sampling.response_format is not None:
        raise _cannot_continue(request, "response_format constrains the reply from its first token")
    return messages[:-1], final.text


def _cannot_continue(request: ChatRequest, why: str) -> InvalidRequest:
    param = request.continue_param or f"messages[{len(request.messages) - 1}]"
    return InvalidRequest(f"The final assistant message cannot be continued here: {why}. Send one "
                          "or the other.", param=param, code="invalid_value")


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
