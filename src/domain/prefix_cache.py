"""The KV prefix-cache policy: which saved entry a prompt reuses, and which entries are evicted.

Pure: the engine keeps the KV tensors (an entry's opaque `handle`); this module only sees token
keys, sizes and models. A key is the prompt's token ids, except that image placeholder tokens are
the image's content hash (a `str`), so two different images never match and the same image does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import attrs

Token = int | str  # a token id, or the content key of the image a placeholder token stands for


@attrs.frozen
class CacheEntry:
    """One conversation's KV state: `tokens` (prompt and generated tokens) for `model_id`.

    `floor` is the shortest prefix the entry can be cut back to: 0 when every layer can be
    trimmed, `len(tokens)` when it can only be reused whole (a sliding window that has wrapped).
    """

    model_id: str
    tokens: tuple[Token, ...]
    nbytes: int
    handle: object = attrs.field(default=None, eq=False, repr=False)
    floor: int = 0


@attrs.frozen
class Hit:
    entry: CacheEntry
    reusable: int  # leading prompt tokens whose KV state the entry provides


@attrs.define
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    reused_tokens: int = 0
    prompt_tokens: int = 0  # of prompts looked up: `reused_tokens / prompt_tokens` is the hit ratio


def common_prefix(a: Sequence[Token], b: Sequence[Token]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def media_free_from(tokens: Sequence[Token]) -> int:
    """The shortest prefix that leaves only text after it (engines feed cached prefixes no
    image features, so every image of the prompt must be inside the reused part)."""
    for i in range(len(tokens) - 1, -1, -1):
        if isinstance(tokens[i], str):
            return i + 1
    return 0


def reusable_length(entry: CacheEntry, prompt: Sequence[Token]) -> int:
    """How much of `prompt` `entry` can provide: the common prefix, less at least one token
    (generation needs one token to prefill), if the entry can be cut there and the rest is text."""
    n = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
    if n <= 0 or n < entry.floor or n < media_free_from(prompt):
        return 0
    return n


class PrefixCache:
    """Several entries, least recently used evicted first, within `budget_bytes` and `max_slots`."""

    def __init__(self, budget_bytes: int, max_slots: int = 8) -> None:
        self.budget_bytes = budget_bytes
        self.max_slots = max_slots
        self.stats = CacheStats()
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # oldest first
        self._next = 0

    @property
    def entries(self) -> tuple[CacheEntry, ...]:
        """Least recently used first."""
        return tuple(self._entries.values())

    @property
    def used_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def lookup(self, model_id: str, prompt: Sequence[Token]) -> Hit | None:
        """The entry of `model_id` that provides the longest prefix of `prompt` (the most recent
        on a tie), marked as used; None when none provides any."""
        best: tuple[int, int] | None = None
        for slot, entry in self._entries.items():
            if entry.model_id == model_id:
                n = reusable_length(entry, prompt)
                if n > 0 and (best is None or n >= best[1]):
                    best = (slot, n)
        self.stats.prompt_tokens += len(prompt)
        if best is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(best[0])
        self.stats.hits += 1
        self.stats.reused_tokens += best[1]
        return Hit(self._entries[best[0]], best[1])

    def store(self, entry: CacheEntry) -> list[CacheEntry]:
        """Keep `entry` as the most recent; returns the entries dropped to make room (and the
        ones it supersedes: same model, a prefix of its tokens, no easier to cut back)."""
        if entry.nbytes > self.budget_bytes or self.max_slots <= 0:
            return [entry]
        dropped = [slot for slot, old in self._entries.items()
                   if old.model_id == entry.model_id and old.floor >= entry.floor
                   and common_prefix(old.tokens, entry.tokens) == len(old.tokens)]
        removed = [self._entries.pop(slot) for slot in dropped]
        self._entries[self._next] = entry
        self._next += 1
        while len(self._entries) > self.max_slots or self.used_bytes > self.budget_bytes:
            removed.append(self._entries.popitem(last=False)[1])
            self.stats.evictions += 1
        return removed

    def drop_model(self, model_id: str) -> list[CacheEntry]:
        """Forget every entry of `model_id` (its model left memory: its KV states are useless)."""
        gone = [slot for slot, entry in self._entries.items() if entry.model_id == model_id]
        return [self._entries.pop(slot) for slot in gone]

    def clear(self) -> list[CacheEntry]:
        removed = list(self._entries.values())
        self._entries.clear()
        return removed
