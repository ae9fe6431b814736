"""Serving besides answering chats: the startup model (or its fallback), freeing an idle model,
the status probes read, the model list. Application policy, so that HTTP only translates it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import attrs

from .errors import DomainError, ModelNotFound
from .models import ModelInfo, ModelRef
from .ports import ModelCatalog

log = logging.getLogger(__name__)


@attrs.frozen
class StartupPolicy:
    preload: str | None = None  # model loaded at startup
    fallback: str | None = None  # loaded instead when `preload` cannot be had
    idle_unload: float = 0.0  # free the model after this many idle seconds; 0: never

    def candidates(self) -> tuple[str, ...]:
        """The models to try at startup, in order. A fallback alone preloads nothing: it only
        stands in for a model that was asked for."""
        names = tuple(name for name in (self.preload, self.fallback) if name)
        if self.preload is None or self.fallback == self.preload:
            return names[:1] if self.preload else ()
        return names


@attrs.frozen
class ServiceStatus:
    """What a health probe reports: whether the generation thread is at work, on what."""

    state: str  # "loading" (a model), "busy" (generating), "idle", or "down" (thread died)
    model: str | None  # the model in memory
    queued: int  # requests waiting for the model
    running: int = 0  # requests in the running batch (prefilling or decoding)
    max_batch: int = 1  # how many may run together


@attrs.frozen
class ModelListing:
    models: tuple[ModelInfo, ...]
    loaded: str | None  # the id of the model in memory, if any


async def preload(load: Callable[[str], Awaitable[ModelRef]],
                  candidates: Sequence[str]) -> ModelRef | None:
    """Load the first candidate that can be had; a failure only logs, so the server still
    starts and serves whatever requests name."""
    for position, name in enumerate(candidates):
        try:
            model = await load(name)
        except DomainError as error:
            later = candidates[position + 1:]
            log.warning("%s is not available: %s%s", name, error.message,
                        f" Serving {later[0]} instead." if later else "")
        else:
            log.info("model %s loaded", model.id)
            return model
    return None


async def unload_when_idle(unload_if_idle: Callable[[float], Awaitable[bool]],
                           seconds: float) -> None:
    """Look a few times per idle period (at least every 30 s), until cancelled."""
    while True:
        await asyncio.sleep(min(seconds / 4, 30.0))
        if await unload_if_idle(seconds):
            log.info("model unloaded after %.0f s without requests", seconds)


def list_models(catalog: ModelCatalog, name: str | None, loaded: str | None) -> ModelListing:
    """Every model, or only the one `name` resolves to (ModelNotFound when none is listed).
    Blocking: the catalog may scan the disk cache."""
    if name is None:
        return ModelListing(tuple(catalog.list_models()), loaded)
    wanted = catalog.resolve(name).id  # raises ModelNotFound
    found = tuple(model for model in catalog.list_models() if model.id == wanted)[:1]
    if not found:
        raise ModelNotFound(f"The model {name!r} does not exist.", param="model")
    return ModelListing(found, loaded)
