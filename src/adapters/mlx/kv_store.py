"""The engine side of the prefix cache: per-entry KV snapshots of mlx_vlm's cache classes.

Built on `mlx_vlm.models.cache` directly (KVCache, RotatingKVCache): an entry is a snapshot, one
(keys, values) pair per layer, copied out of the cache that generated it, so the next generation
(which writes into its cache) never changes a kept entry; reuse restores fresh cache objects cut
to the reusable prefix. Which entry to reuse and which to evict is the domain's PrefixCache.

Sliding-window layers (RotatingKVCache, e.g. Gemma 3's local layers) can be cut back only while
their window has not wrapped (nothing evicted yet). An entry with a wrapped window is kept with
`floor = len(tokens)`: reused only whole, when the new prompt extends it exactly, never trimmed.
Any other cache class (linear attention, quantized, chunked...) turns the prefix cache off for
that model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs

from ...domain.prefix_cache import CacheEntry, Hit, PrefixCache, Token
from ..host import Host

log = logging.getLogger(__name__)
_MB = 1024 * 1024


@attrs.frozen
class _Layer:
    keys: Any
    values: Any
    max_size: int | None = None  # a RotatingKVCache's window
    keep: int = 0
    offset: int = 0  # tokens seen (a wrapped window holds fewer)
    idx: int = 0  # a wrapped ring buffer's write position


@attrs.frozen
class CachePlan:
    """What `prepare` decided: the prompt's cache key, and the entry to reuse (if any)."""

    model_id: str
    ids: tuple[int, ...]
    key: tuple[Token, ...]
    hit: Hit | None

    @property
    def reused(self) -> int:
        return self.hit.reusable if self.hit else 0


def default_budget_mb(host: Host | None = None) -> int:
    """An eighth of physical memory, between 256 MiB and 4 GiB (8 GiB assumed when unknown)."""
    total = (host or Host()).total_memory_bytes() or 8 * 1024 * _MB
    return int(min(4096, max(256, total // 8 // _MB)))


def cache_key(ids: Sequence[int], media_ids: set[int], image_keys: Sequence[str]) -> tuple[Token, ...] | None:
    """`ids` with the k-th run of image placeholder tokens replaced by the k-th image's key;
    None when the runs and the images do not pair up (then the prompt is not cached)."""
    key: list[Token] = []
    run = -1
    for i, token in enumerate(ids):
        if token in media_ids:
            run += i == 0 or ids[i - 1] not in media_ids
            if run >= len(image_keys):
                return None
            key.append(image_keys[run])
        else:
            key.append(token)
    return tuple(key) if run + 1 == len(image_keys) else None


def supported(cache: Sequence[Any]) -> bool:
    from mlx_vlm.models.cache import KVCache, RotatingKVCache

    return all(type(layer) in (KVCache, RotatingKVCache) for layer in cache)


def snapshot(cache: Sequence[Any], length: int) -> tuple[list[_Layer], int] | None:
    """Copies of the first `length` tokens of every layer (and its byte size), or None when a
    wrapped window would have to be cut back."""
    import mlx.core as mx

    layers: list[_Layer] = []
    for layer in cache:
        max_size = getattr(layer, "max_size", None)
        if layer.keys is None or layer.offset < length:
            return None
        if max_size is not None and layer.offset > max_size:  # wrapped: whole, as it is
            if layer.offset != length:
                return None
            layers.append(_Layer(mx.contiguous(layer.keys), mx.contiguous(layer.values),
                                 max_size, layer.keep, layer.offset, layer._idx))
        else:
            layers.append(_Layer(mx.contiguous(layer.keys[..., :length, :]),
                                 mx.contiguous(layer.values[..., :length, :]),
                                 max_size, getattr(layer, "keep", 0), length, length))
    mx.eval([(layer.keys, layer.values) for layer in layers])
    return layers, sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)


def restore(layers: Sequence[_Layer], length: int) -> list[Any]:
    """Fresh cache objects holding the first `length` tokens of a snapshot (new array objects:
    writing into them leaves the snapshot as it is)."""
    from mlx_vlm.models.cache import KVCache, RotatingKVCache

    return [_restored(layer, length, KVCache, RotatingKVCache) for layer in layers]


def _restored(layer: _Layer, length: int, flat: Any, rotating: Any) -> Any:
    kv: Any
    if layer.max_size is None:
        kv = flat()
        kv.keys, kv.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        kv.offset = length
    elif layer.offset > layer.max_size:  # wrapped: only ever restored whole
        kv = rotating(max_size=layer.max_size, keep=layer.keep)
        kv.keys, kv.values = layer.keys[...], layer.values[...]
        kv.offset, kv._idx = layer.offset, layer.idx
    else:
        kv = rotating(max_size=layer.max_size, keep=layer.keep)
        kv.keys, kv.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        kv.offset = kv._idx = length
    return kv


class KvPrefixStore:
    """The domain's PrefixCache holding MLX KV snapshots, for one engine."""

    def __init__(self, budget_mb: int | None = None, max_slots: int = 8) -> None:
        self.policy = PrefixCache((budget_mb or default_budget_mb()) * _MB, max_slots)

    def plan(self, model: Any, model_id: str, ids: Sequence[int],
             image_keys: Sequence[str]) -> CachePlan | None:
        """The cache key of a prompt and the entry it reuses; None when it cannot be cached."""
        from mlx_vlm.apc import multimodal_token_ids_from_config
        from mlx_vlm.models.cache import make_prompt_cache

        if not supported(make_prompt_cache(model.language_model)):
            return None
        key = cache_key(ids, multimodal_token_ids_from_config(model.config), image_keys)
        if key is None:
            return None
        return CachePlan(model_id, tuple(ids), key, self.policy.lookup(model_id, key))

    def save(self, plan: CachePlan, cache: Sequence[Any], generated: Sequence[int]) -> None:
        """Keep the KV state of the prompt and its generated tokens for the next turn."""
        tokens = plan.key + tuple(generated)
        length = min(len(tokens), *(layer.offset for layer in cache))
        if length <= plan.reused:
            return
        taken = snapshot(cache, length)
        if taken is None:
            return
        layers, nbytes = taken
        wrapped = any(layer.max_size is not None and layer.offset > layer.max_size
                      for layer in layers)
        tokens = tokens[:length]
        self.policy.store(CacheEntry(plan.model_id, tokens, nbytes, layers,
                                     floor=length if wrapped else 0))

    def drop_model(self, model_id: str) -> None:
        if dropped := self.policy.drop_model(model_id):
            log.info("prefix cache: dropped %d entries of %s", len(dropped), model_id)
