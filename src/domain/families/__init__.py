"""Model families: one module per family, each defining its Profile (tool-call format, message
rewrite, extra stops, thinking markers, default context), and the one registry that maps a
model's config `model_type` to its family.

Adding a family: write `families/<name>.py` with a `PROFILE` (its `model_types` are the
config.json values it claims), add it to `PROFILES` below, and test it (unit: the profile is
chosen from its model_type; integration: a tiny checkpoint with the real chat template).
"""

from __future__ import annotations

from collections.abc import Mapping

from . import gemma3, generic, qwen3, qwen3_vl
from .profile import MessageRewrite, Profile

__all__ = ["GEMMA3", "GENERIC", "PROFILES", "QWEN3", "QWEN3_VL", "MessageRewrite", "Profile",
           "profile_for_model_type", "profile_named", "tool_families"]

GEMMA3 = gemma3.PROFILE
QWEN3_VL = qwen3_vl.PROFILE
QWEN3 = qwen3.PROFILE
GENERIC = generic.PROFILE  # the fallback: no tool calls, the server's default context

PROFILES: tuple[Profile, ...] = (GEMMA3, QWEN3_VL, QWEN3, GENERIC)

_BY_NAME: Mapping[str, Profile] = {profile.name: profile for profile in PROFILES}
_BY_MODEL_TYPE: Mapping[str, Profile] = {
    model_type: profile for profile in PROFILES for model_type in profile.model_types}


def profile_for_model_type(model_type: str) -> Profile:
    """The family of a model from its config's `model_type`; GENERIC for any other."""
    return _BY_MODEL_TYPE.get(model_type, GENERIC)


def profile_named(name: str) -> Profile:
    """The profile a ModelRef.family names; GENERIC for a name no family has (the safe side:
    no tools offered, nothing parsed)."""
    return _BY_NAME.get(name, GENERIC)


def tool_families() -> tuple[Profile, ...]:
    """The families that can call tools, in registry order (for messages to clients)."""
    return tuple(profile for profile in PROFILES if profile.tool_format is not None)
