"""The fallback family: a model whose config names no family the server knows (SmolLM2's
plain ChatML template, for one, ignores `tools`). It has no tool-call format, so tools are
refused, and its context default is the server's fallback."""

from __future__ import annotations

from .profile import Profile

PROFILE = Profile(name="generic", title="generic", model_types=(), default_context=8192)
