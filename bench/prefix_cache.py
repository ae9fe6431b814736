"""The KV prefix cache on SmolLM2, in-process through ChatService (temperature 0).

Row 1: turn 6 of a growing conversation (>= 2,000 tokens of history): time to first token with
the cache / without it (median of --runs turn-6 questions). Row 2: four conversations taking
turns: the hit ratio on cacheable tokens (reused / what an unlimited cache would reuse).
Run: python -m bench.prefix_cache [--runs 3]"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Any

from ._fastpath import prepare

if TYPE_CHECKING:
    from mlx_server.adapters.mlx.engine import MlxEngine
    from mlx_server.domain.chat import ChatService
    from mlx_server.domain.completion import Usage
    from mlx_server.domain.conversation import Message
    from mlx_server.domain.families import GENERIC


def words(seed: int, n: int) -> str:
    topics = ("rivers", "bridges", "forests", "engines", "harbours", "gardens", "comets")
    return " ".join(f"{topics[(seed + i) % len(topics)]}-{seed}-{i}" for i in range(n))


async def ttft(service: ChatService, model: str, messages: list[Message],
               max_tokens: int = 8) -> tuple[float, str, Usage]:
    """Seconds to the first token, the reply, and its usage."""
    from mlx_server.domain.completion import StreamEnd, TextDelta
    from mlx_server.domain.conversation import (
        ChatRequest,
        SamplingParams,
    )

    start, first, text = time.perf_counter(), None, ""
    request = ChatRequest(model=model, messages=tuple(messages),
                          sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens))
    async for event in await service.open_stream(request):
        if isinstance(event, TextDelta):
            first = first or time.perf_counter()
            text += event.text
        elif isinstance(event, StreamEnd):
            return (first or time.perf_counter()) - start, text, event.usage
    raise RuntimeError("no end")


def said(role: str, text: str) -> Message:
    from mlx_server.domain.conversation import (
        Message,
        Role,
        TextPart,
    )

    return Message(Role(role), (TextPart(text),))


def user(text: str) -> Message:
    return said("user", text)


def assistant(text: str) -> Message:
    return said("assistant", text)


async def _history(cached: ChatService) -> list[Message]:
    history: list[Message] = []
    for turn in range(1, 6):  # five turns of ~420 tokens each (prompt + reply): the history
        history.append(user(f"Note {turn}: " + words(turn, 65) + ". Reply OK."))
        seconds, reply, usage = await ttft(cached, "smollm", history)
        history.append(assistant(reply))
        print(f"turn {turn}: prompt {usage.prompt_tokens:5d} tokens, cached {usage.cached_tokens:5d}, "
              f"TTFT {seconds:6.3f} s (with cache)")
    return history


async def growing(cached: ChatService, plain: ChatService, runs: int) -> None:
    history = await _history(cached)
    with_cache, without = [], []
    for run in range(runs):
        prompt = [*history, user(f"Question {run}: which note mentioned comets first?")]
        seconds, _, usage = await ttft(cached, "smollm", prompt)
        with_cache.append(seconds)
        cold, _, cold_usage = await ttft(plain, "smollm", prompt)
        without.append(cold)
        print(f"turn 6 run {run}: prompt {usage.prompt_tokens} tokens, cached {usage.cached_tokens}: "
              f"TTFT {seconds:.3f} s with cache, {cold:.3f} s without ({cold_usage.cached_tokens} cached)")
    ratio = statistics.median(with_cache) / statistics.median(without)
    print(f"ROW 1  turn-6 TTFT with cache / without: {statistics.median(with_cache):.3f} s / "
          f"{statistics.median(without):.3f} s = {ratio:.4f}  (target <= 0.05)")


def shadow(store: Any) -> list[int]:
    """Make ``store`` (the engine's KvPrefixStore) also feed an unlimited cache; the returned
    one-item list counts the tokens that one would have reused: the cacheable tokens."""
    from mlx_server.domain.prefix_cache import (
        CacheEntry,
        PrefixCache,
    )

    ideal = PrefixCache(1 << 60, 10_000)
    cacheable = [0]
    plan, save = store.plan, store.save

    def shadow_plan(*args: Any) -> Any:
        found = plan(*args)
        hit = ideal.lookup(found.model_id, found.key) if found else None
        cacheable[0] += hit.reusable if hit else 0
        return found

    def shadow_save(found: Any, cache: Any, generated: Any) -> None:
        ideal.store(CacheEntry(found.model_id, found.key + tuple(generated), 0))
        save(found, cache, generated)

    store.plan, store.save = shadow_plan, shadow_save
    return cacheable


async def interleaved(cached: ChatService, engine: MlxEngine, turns: int) -> None:
    store: Any = engine.prefix
    cacheable = shadow(store)
    before = store.policy.stats.reused_tokens
    chats = [[user(f"Conversation {c}. Context: " + words(10 + c, 60))] for c in range(4)]
    reused = 0
    for turn in range(turns):
        for c, chat in enumerate(chats):
            if turn:
                chat.append(user(f"Turn {turn}: tell me more about {words(c + turn, 3)}."))
            _, reply, usage = await ttft(cached, "smollm", chat)
            chat.append(assistant(reply))
            reused += usage.cached_tokens
    assert reused == store.policy.stats.reused_tokens - before
    print(f"ROW 2  four interleaved conversations, {turns} turns each: reused {reused} of "
          f"{cacheable[0]} cacheable tokens: hit ratio {reused / max(1, cacheable[0]):.3f} "
          "(target >= 0.9)")


def main() -> None:
    prepare()
    from mlx_server.adapters.mlx.engine import MlxEngine
    from mlx_server.adapters.store.catalog import StaticCatalog
    from mlx_server.app.bootstrap import build_service
    from mlx_server.app.config import Settings
    from mlx_server.domain.models import ModelRef

    from ._common import smollm_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    catalog = StaticCatalog({"smollm": ModelRef("smollm", str(smollm_dir()), GENERIC.name, 8192)})
    engine = MlxEngine()
    cached = build_service(Settings(), engine=engine, catalog=catalog)
    plain = build_service(Settings(), engine=MlxEngine(prefix_cache=False), catalog=catalog)
    asyncio.run(growing(cached, plain, args.runs))
    asyncio.run(interleaved(cached, engine, args.turns))


if __name__ == "__main__":
    main()
