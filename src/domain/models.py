"""Models as the domain sees them: a resolved reference and what the catalog lists."""

from __future__ import annotations

import attrs

from .families import GENERIC


@attrs.frozen
class ModelRef:
    id: str  # the canonical id clients see: a repo id, or a local path
    source: str  # what the engine loads: a local directory, a repo id or a file
    family: str = GENERIC.name  # the name of its profile (domain.families)
    context_length: int = GENERIC.default_context
    vision: bool = False  # whether the model takes images
    settled: bool = True  # False: family/vision/context are guesses (config not read yet)


@attrs.frozen
class ModelInfo:
    id: str
    created: int = 0
    owned_by: str = "mlx-server"
    aliases: tuple[str, ...] = ()
    available: bool = True
