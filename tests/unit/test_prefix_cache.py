"""The prefix-cache policy: longest common prefix, LRU within a budget, never another model's
or another image's state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_server.domain.prefix_cache import (
    CacheEntry,
    PrefixCache,
    Token,
    common_prefix,
    media_free_from,
    reusable_length,
)

MODELS = ("a", "b")
IMAGES = ("sha-1", "sha-2")
tokens = st.lists(st.one_of(st.integers(0, 3), st.sampled_from(IMAGES)), max_size=12).map(tuple)
text_tokens = st.lists(st.integers(0, 3), min_size=1, max_size=12).map(tuple)
entries = st.builds(CacheEntry, model_id=st.sampled_from(MODELS), tokens=tokens,
                    nbytes=st.integers(0, 400), floor=st.sampled_from([0, 0, 5]))
operations = st.lists(st.tuples(st.booleans(), entries, st.sampled_from(MODELS), tokens),
                      max_size=30)


def run(cache: PrefixCache, ops: list[tuple[bool, CacheEntry, str, tuple[Token, ...]]]) -> None:
    for is_store, entry, model, prompt in ops:
        if is_store:
            cache.store(entry)
        else:
            check_lookup(cache, model, prompt)


def check_lookup(cache: PrefixCache, model: str, prompt: tuple[Token, ...]) -> None:
    candidates = [e for e in cache.entries if e.model_id == model]
    best = max((reusable_length(e, prompt) for e in candidates), default=0)
    hit = cache.lookup(model, prompt)
    if best == 0:
        assert hit is None
        return
    assert hit is not None and hit.reusable == best and hit.entry.model_id == model
    # the reused prefix is a common prefix, leaves at least one token and only text to prefill
    assert hit.entry.tokens[:hit.reusable] == prompt[:hit.reusable]
    assert hit.reusable < len(prompt) and hit.reusable >= media_free_from(prompt)
    # every image in the reused part is the very same image at the very same place
    for mine, theirs in zip(prompt[:hit.reusable], hit.entry.tokens, strict=False):
        assert type(mine) is type(theirs) and mine == theirs
    # and no entry of this model shares a longer usable prefix
    assert all(min(common_prefix(e.tokens, prompt), len(prompt) - 1) <= hit.reusable
               for e in candidates if e.floor == 0)
    assert cache.entries[-1] is hit.entry  # now the most recently used


@settings(max_examples=300)
@given(budget=st.integers(0, 1000), slots=st.integers(0, 4), ops=operations)
def test_eviction_never_exceeds_the_budget_or_the_slot_count(
        budget: int, slots: int, ops: list[tuple[bool, CacheEntry, str, tuple[Token, ...]]]) -> None:
    cache = PrefixCache(budget, slots)
    for is_store, entry, model, prompt in ops:
        if is_store:
            removed = cache.store(entry)
            assert entry in cache.entries or entry in removed
        else:
            cache.lookup(model, prompt)
        assert cache.used_bytes <= budget and len(cache.entries) <= slots


@settings(max_examples=300)
@given(ops=operations)
def test_the_chosen_entry_is_a_longest_common_prefix_of_the_same_model_and_images(
        ops: list[tuple[bool, CacheEntry, str, tuple[Token, ...]]]) -> None:
    run(PrefixCache(10_000, 4), ops)


@given(prompt=text_tokens, extra=text_tokens)
def test_a_conversation_edited_in_the_middle_reuses_up_to_the_edit(
        prompt: tuple[int, ...], extra: tuple[int, ...]) -> None:
    cache = PrefixCache(10_000)
    cache.store(CacheEntry("a", prompt + extra, 1))
    edited = (*prompt, 99, *extra)
    hit = cache.lookup("a", edited)
    assert hit is not None and hit.reusable == len(prompt)


def test_resending_the_same_prompt_reuses_all_but_its_last_token() -> None:
    cache = PrefixCache(100)
    cache.store(CacheEntry("a", (1, 2, 3), 1))
    hit = cache.lookup("a", (1, 2, 3))
    assert hit is not None and hit.reusable == 2


def test_least_recently_used_goes_first() -> None:
    cache = PrefixCache(30, 8)
    first, second = CacheEntry("a", (1, 1), 10), CacheEntry("a", (2, 2), 10)
    cache.store(first)
    cache.store(second)
    assert cache.lookup("a", (1, 1, 5)) is not None  # `first` used again: `second` is older now
    assert cache.store(CacheEntry("a", (3, 3), 15)) == [second]
    assert cache.stats.evictions == 1


def test_an_image_must_be_the_same_image_and_sit_inside_the_reused_part() -> None:
    cache = PrefixCache(100)
    cache.store(CacheEntry("a", (1, "sha-1", "sha-1", 2, 3), 1))
    assert cache.lookup("a", (1, "sha-2", "sha-2", 2, 3, 4)) is None
    hit = cache.lookup("a", (1, "sha-1", "sha-1", 2, 3, 4))
    assert hit is not None and hit.reusable == 5
    assert cache.lookup("a", (1, 7, "sha-1")) is None  # an image left to prefill: no reuse


def test_a_wrapped_window_is_reused_whole_or_not_at_all() -> None:
    cache = PrefixCache(100)
    cache.store(CacheEntry("a", (1, 2, 3), 1, floor=3))
    assert cache.lookup("a", (1, 2, 9)) is None
    hit = cache.lookup("a", (1, 2, 3, 4))
    assert hit is not None and hit.reusable == 3


def test_a_swap_drops_the_old_models_entries_and_a_longer_turn_supersedes_its_prefix() -> None:
    cache = PrefixCache(100)
    cache.store(CacheEntry("a", (1, 2), 1))
    assert cache.store(CacheEntry("a", (1, 2, 3), 1)) == [CacheEntry("a", (1, 2), 1)]
    cache.store(CacheEntry("b", (1, 2), 1))
    assert [e.model_id for e in cache.drop_model("a")] == ["a"]
    assert cache.lookup("a", (1, 2, 3, 4)) is None
    assert [e.model_id for e in cache.entries] == ["b"]
