"""The Profile type: everything the server knows about one model family, in one value."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from ..conversation import Message, ToolSpec
from ..tool_types import ToolCallFormat

# `messages` rewritten so that a template that knows no tools still shows them to the model
MessageRewrite = Callable[[Sequence[Message], Sequence[ToolSpec]], tuple[Message, ...]]


@attrs.frozen
class Profile:
    """A model family's prompt conventions, chosen from the model's config (`model_type`).

    - `tool_format`: how calls appear in the output (None: the family has no tool-calling
      convention; tools are refused and nothing is parsed).
    - `rewrite`: None when the chat template renders tools and tool turns itself (it gets the
      tools); otherwise the tools and tool turns go into the messages and the template gets none.
    - `extra_stops`: internal stop sequences while tools are offered (text the model should
      never write, such as a tool result it makes up).
    - `thinking`: the (open, close) markers of the family's reasoning block, split from the
      answer (domain/reasoning.py); None: the family does not reason in its replies.
    - `default_context`: the context length when the config does not say (or is not read yet).
    """

    name: str  # what ModelRef.family holds
    title: str  # how messages to clients name the family
    model_types: tuple[str, ...]  # the config.json model_type values this family claims
    default_context: int  # stated by each family: no figure shared by default
    tool_format: ToolCallFormat | None = None
    rewrite: MessageRewrite | None = None
    extra_stops: tuple[str, ...] = ()
    thinking: tuple[str, str] | None = None

    def prompt(self, messages: Sequence[Message],
               tools: Sequence[ToolSpec]) -> tuple[tuple[Message, ...], tuple[ToolSpec, ...]]:
        """The conversation as the template should see it, and the tools the template renders."""
        if self.rewrite is None:
            return tuple(messages), tuple(tools)
        return self.rewrite(messages, tools), ()
