"""Qwen3-VL (`model_type` qwen3_vl): Hermes `<tool_call>` blocks; its chat template renders the
tools (a `<tools>` block in the system turn) and tool results (`<tool_response>` in a user turn)
itself. Its text config declares a 262144-token context.

The Instruct and Thinking checkpoints share the model type; only their templates differ. The
Thinking template's generation prompt opens `<think>` itself (reasoning always on, no
`enable_thinking` switch); the Instruct one never thinks. The server tells them apart by the
rendered prompt's end (domain/reasoning.py).
"""

from __future__ import annotations

from ..tool_hermes import HermesToolCalls
from .profile import Profile
from .qwen3 import THINKING

PROFILE = Profile(name="qwen3_vl", title="Qwen3-VL", model_types=("qwen3_vl",),
                  tool_format=HermesToolCalls(), thinking=THINKING, default_context=262144)
