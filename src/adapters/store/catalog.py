"""A fixed catalog of models known by alias or id (the built-in table by default), and the one
404 for names that are not models here."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import attrs

from ...domain.errors import ModelNotFound
from ...domain.models import ModelInfo, ModelRef
from .aliases import BUILTIN_REFS

DEFAULT_ALIASES: Mapping[str, ModelRef] = BUILTIN_REFS

# a name shown back to the client: alias / repo-id shaped only, never a path (see not_found)
_SHOWN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def not_found(name: str, known: str) -> ModelNotFound:
    """The one 404 for a name that is not a model here. The name is quoted back only when it is
    shaped like an alias or a repo id: a path, a 10 kB string or control characters are not
    echoed, so the message of two different paths (one that exists, one that does not) is
    the same, byte for byte."""
    shown = repr(name) if _SHOWN.fullmatch(name) else "named in the request"
    return ModelNotFound(f"The model {shown} does not exist here: it is not an alias, {known}.",
                         param="model")


@attrs.frozen
class StaticCatalog:
    """A fixed set of models, known by alias or id. Implements the ModelCatalog port."""

    aliases: Mapping[str, ModelRef] = DEFAULT_ALIASES

    def resolve(self, name: str) -> ModelRef:
        """Exact names only: a dict lookup, so no name, however hostile, reaches the disk."""
        if name in self.aliases:
            return self.aliases[name]
        for model in self.aliases.values():
            if model.id == name:
                return model
        raise not_found(name, f"nor a known model id. Known models: {', '.join(self._names())}")

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
