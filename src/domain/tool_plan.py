"""How one request uses tools: which format parses the output, what the template sees, and what
the assistant turn is forced to start with."""

from __future__ import annotations

import attrs

from .conversation import ChatRequest, Message, ToolChoiceMode, ToolSpec
from .errors import InvalidRequest
from .gemma_prompt import gemma_tool_messages
from .models import Family, ModelRef
from .tool_calls import ContentPiece, ToolCallFormat, ToolEvent, format_for

# Gemma has no tool-result role: when it writes a result block itself, it is making one up.
_GEMMA_INVENTED_RESULT = "```tool_output"


@attrs.frozen
class ToolPlan:
    format: ToolCallFormat | None  # None: no tools offered, nothing parsed
    tools: tuple[ToolSpec, ...]  # the tools calls are validated against
    messages: tuple[Message, ...]  # the conversation as the model's template should see it
    template_tools: tuple[ToolSpec, ...]  # tools the template renders itself (Qwen)
    prefix: str = ""  # forced start of the assistant turn (tool_choice required / named)
    stops: tuple[str, ...] = ()  # internal stop sequences, never returned
    single_call: bool = False  # parallel_tool_calls: false


def plan_tools(request: ChatRequest, model: ModelRef) -> ToolPlan:
    """Decide how `request` offers its tools to `model`; refuses tools a model cannot call."""
    offered = request.tool_choice.mode is not ToolChoiceMode.NONE and bool(request.tools)
    fmt = format_for(model.family) if offered else None
    if offered and fmt is None:
        raise InvalidRequest(
            f"The model {model.id!r} has no tool-calling format this server knows (Gemma 3 "
            "tool_code blocks, Qwen <tool_call> tags). Send the request without tools, with "
            "tool_choice 'none', or choose a Gemma 3 or Qwen3-VL model.", param="tools",
            code="unsupported_value")
    tools = request.tools if fmt else ()
    messages, template_tools = request.messages, tools
    stops: tuple[str, ...] = ()
    if model.family is Family.GEMMA3:  # its template knows no tools: the prompt carries them
        messages, template_tools = gemma_tool_messages(request.messages, tools), ()
        stops = (_GEMMA_INVENTED_RESULT,) if fmt else ()
    return ToolPlan(format=fmt, tools=tools, messages=messages, template_tools=template_tools,
                    prefix=fmt.forced_prefix(request.tool_choice) if fmt else "", stops=stops,
                    single_call=fmt is not None and not request.parallel_tool_calls)


class PlainText:
    """The streamer for output that carries no tool calls: everything is content."""

    rejected = 0

    def feed(self, text: str) -> list[ToolEvent]:
        return [ContentPiece(text)] if text else []

    def finish(self) -> list[ToolEvent]:
        return []
