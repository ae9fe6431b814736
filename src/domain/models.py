"""Models as the domain sees them: a resolved reference and what the catalog lists."""

from __future__ import annotations

import enum

import attrs


class Family(enum.StrEnum):
    """Decides the prompt conventions (tool-call format, image markers) of a model."""

    GEMMA3 = "gemma3"
    QWEN3_VL = "qwen3_vl"
    GENERIC = "generic"


@attrs.frozen
class ModelRef:
    id: str  # the canonical id clients see: a repo id, or a local path
    source: str  # what the engine loads: a local directory, a repo id or a file
    family: Family = Family.GENERIC
    context_length: int = 8192
    vision: bool = False  # whether the model takes images


@attrs.frozen
class ModelInfo:
    id: str
    created: int = 0
    owned_by: str = "mlx-server"
    aliases: tuple[str, ...] = ()
    available: bool = True
