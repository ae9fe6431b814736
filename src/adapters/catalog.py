"""The built-in model names: the seed's aliases and the families they belong to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ..domain.errors import ModelNotFound
from ..domain.models import Family, ModelInfo, ModelRef

GEMMA = ModelRef(id="mlx-community/gemma-3-4b-it-4bit", source="mlx-community/gemma-3-4b-it-4bit",
                 family=Family.GEMMA3, context_length=131072, vision=True)
QWEN = ModelRef(id="mlx-community/Qwen3-VL-4B-Instruct-4bit",
                source="mlx-community/Qwen3-VL-4B-Instruct-4bit", family=Family.QWEN3_VL,
                context_length=262144, vision=True)
SMOLLM = ModelRef(id="HuggingFaceTB/SmolLM2-135M-Instruct", source="builtin:smollm2",
                  family=Family.GENERIC, context_length=8192)

DEFAULT_ALIASES: Mapping[str, ModelRef] = {"gemma": GEMMA, "qwen": QWEN, "smollm": SMOLLM}


@attrs.frozen
class StaticCatalog:
    """A fixed set of models, known by alias or id. Implements the ModelCatalog port."""

    aliases: Mapping[str, ModelRef] = DEFAULT_ALIASES

    def resolve(self, name: str) -> ModelRef:
        if name in self.aliases:
            return self.aliases[name]
        for model in self.aliases.values():
            if model.id == name:
                return model
        raise ModelNotFound(
            f"The model {name!r} does not exist. Known models: {', '.join(self._names())}.",
            param="model")

    def list_models(self) -> Sequence[ModelInfo]:
        by_id: dict[str, list[str]] = {}
        for alias, model in self.aliases.items():
            by_id.setdefault(model.id, []).append(alias)
        return [ModelInfo(id=model_id, aliases=tuple(names)) for model_id, names in by_id.items()]

    def is_local(self, model: ModelRef) -> bool:
        return True

    def fetch(self, model: ModelRef) -> ModelRef:
        return model

    def _names(self) -> list[str]:
        return [*self.aliases, *{model.id for model in self.aliases.values()}]
