"""Qwen3 text models (`model_type` qwen3, e.g. Qwen/Qwen3-4B): Hermes `<tool_call>` blocks, the
tools and tool results rendered by the chat template itself (`<tools>`, `<tool_response>`), as
for Qwen3-VL.

Qwen3 is a hybrid reasoning model: unless the template is rendered with `enable_thinking`
false, the reply opens with a `<think>` ... `</think>` block, which the server splits from the
answer (domain/reasoning.py). The server renders it with the template's own default (thinking
on) unless the request switches it off (the prompt then ends with an empty, closed think block
and the reply starts with the answer). The dense Qwen3 checkpoints declare a 40960-token context
(32768 native, plus room for the reply).
"""

from __future__ import annotations

from ..tool_hermes import HermesToolCalls
from .profile import Profile

THINKING = ("<think>", "</think>")

PROFILE = Profile(name="qwen3", title="Qwen3", model_types=("qwen3",),
                  tool_format=HermesToolCalls(), thinking=THINKING, default_context=40960)
