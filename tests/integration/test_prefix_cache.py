"""The KV prefix cache changes nothing but speed: at temperature 0 every reply with the cache is,
token for token, the reply without it (SmolLM2 and both tiny VLMs; multi-turn, edited in the
middle, with images, across swaps), and `cached_tokens` is exactly what mlx_vlm reused."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient
from tests.support.images import data_uri, png_bytes

pytestmark = pytest.mark.slow
RED, BLUE = data_uri(png_bytes(color=(200, 30, 30))), data_uri(png_bytes(color=(20, 30, 200)))


@pytest.fixture(scope="module")
def catalog(real_catalog: StaticCatalog) -> StaticCatalog:
    return real_catalog


class Pair:
    """The same requests to an engine with the prefix cache and to one without."""

    def __init__(self, catalog: StaticCatalog) -> None:
        self.cached = MlxEngine()
        self.clients = [ConnectedTestClient(build(Settings(), engine=engine, catalog=catalog))
                        for engine in (self.cached, MlxEngine(prefix_cache=False))]

    def ask(self, model: str, messages: list[dict[str, Any]], tokens: int = 6) -> tuple[str, int]:
        """The reply (the same from both) and the cached engine's `cached_tokens`."""
        replies = [client.simulate_post("/v1/chat/completions", json={
            "model": model, "messages": messages, "temperature": 0, "max_tokens": tokens}).json
            for client in self.clients]
        texts = [reply["choices"][0]["message"]["content"] for reply in replies]
        assert texts[0] == texts[1]
        assert replies[0]["usage"]["prompt_tokens"] == replies[1]["usage"]["prompt_tokens"]
        assert replies[1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        return texts[0], replies[0]["usage"]["prompt_tokens_details"]["cached_tokens"]

    def converse(self, model: str, turns: list[Any], tokens: int = 6) -> list[int]:
        """Each user turn after the replies so far; the `cached_tokens` of each turn."""
        messages: list[dict[str, Any]] = []
        cached = []
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            text, reused = self.ask(model, messages, tokens)
            messages.append({"role": "assistant", "content": text})
            cached.append(reused)
        return cached


@pytest.fixture(scope="module")
def pair(catalog: StaticCatalog) -> Pair:
    return Pair(catalog)


@pytest.fixture(autouse=True)
def no_refused_reuse(caplog: pytest.LogCaptureFixture) -> Any:
    """mlx_vlm reused exactly the planned tokens every time (else the engine warns)."""
    with caplog.at_level(logging.WARNING, logger="mlx_server.adapters.mlx.engine"):
        yield
    assert "did not reuse" not in caplog.text


def test_the_same_prompt_twice_reuses_all_but_its_last_token(pair: Pair) -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    pair.ask("smollm", messages)
    _, cached = pair.ask("smollm", messages)
    assert cached > 0
    prompt = pair.clients[0].simulate_post("/v1/chat/completions", json={
        "model": "smollm", "messages": messages, "max_tokens": 1}).json["usage"]
    assert prompt["prompt_tokens_details"]["cached_tokens"] == prompt["prompt_tokens"] - 1


@pytest.mark.parametrize("model", ["smollm", "gemma3", "qwen3"])
def test_multi_turn_and_an_edit_in_the_middle_give_the_same_tokens(pair: Pair, model: str) -> None:
    turns = ["Name a fruit.", "And a colour?", "Now a number."]
    cached = pair.converse(model, turns, tokens=4)
    # turn 1 may reuse the template's opening tokens (an earlier test's entry); each later turn
    # reuses the whole conversation before it
    assert cached[1] > cached[0] and cached[2] > cached[1]
    edited = pair.converse(model, [turns[0], "And an animal?", turns[2]], tokens=4)
    # the edit is in turn 2: it reuses turn 1 and its reply (and the edited message's first
    # tokens) from the first run, not the first run's turn 2
    assert edited[0] > 0 and cached[1] <= edited[1] < cached[2] and edited[2] > edited[1]


@pytest.mark.parametrize("model", ["gemma3", "qwen3"])
def test_images_in_the_prefix_are_reused_only_when_they_are_the_same(pair: Pair, model: str) -> None:
    def look(url: str) -> list[Any]:
        return [{"type": "text", "text": "Look."}, {"type": "image_url", "image_url": {"url": url}}]

    red = pair.converse(model, [look(RED), "What colour?", "Sure?"])
    assert red[1] > 0 and red[2] > red[1]
    # the same text with another image: nothing past the image may come from the red one
    blue = pair.converse(model, [look(BLUE), "What colour?"])
    assert blue[1] > 0
    _, again = pair.ask(model, [{"role": "user", "content": look(RED)}])
    assert again > 0  # the same red image at the same place: reused
    # a new image in the part left to prefill: no reuse at all (its features must be computed);
    # the first, text-only turn may reuse the template's opening tokens from earlier entries
    assert pair.converse(model, ["Hi.", look(BLUE)])[1] == 0


def test_swaps_drop_the_old_models_entries_and_outputs_stay_the_same(pair: Pair) -> None:
    turns = ["Tell me a word.", "Another one."]
    pair.converse("smollm", turns)
    pair.converse("qwen3", turns)
    assert pair.cached.prefix is not None
    assert {e.model_id for e in pair.cached.prefix.policy.entries} == {"tiny-qwen3-vl"}
    assert pair.converse("smollm", turns)[0] == 0  # its entries left with it


def test_a_gemma_window_that_wrapped_is_never_cut_back(pair: Pair) -> None:
    long = "Please remember these words: " + " ".join(f"w{i}" for i in range(200))
    cached = pair.converse("gemma3", [long, "Which was first?", "And last?"], tokens=4)
    assert cached[0] == 0  # > 512 tokens: past the sliding window
    assert pair.cached.prefix is not None
    assert all(e.floor == len(e.tokens) for e in pair.cached.prefix.policy.entries)
