"""Continuous batching on the fake engine: rows decode together, each keeps its own parameters,
a failing row or step fails only what it must, cancellation and swaps keep working."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build, build_service
from mlx_server.app.config import Settings
from mlx_server.domain.chat import ChatService
from mlx_server.domain.completion import Completion, TextDelta
from mlx_server.domain.conversation import ChatRequest, Message, Role, SamplingParams, TextPart
from mlx_server.domain.errors import EngineFailure, EngineUnavailable
from tests.support.http import ConnectedTestClient

GEMMA, QWEN = "gemma", "qwen"


def ask(text: str, model: str = GEMMA, **sampling: Any) -> ChatRequest:
    return ChatRequest(model, (Message(Role.USER, (TextPart(text),)),),
                       sampling=SamplingParams(**sampling))


def service(engine: FakeEngine, **settings: Any) -> ChatService:
    return build_service(Settings(engine="fake", **settings), engine=engine)


async def alone(chat: ChatService, requests: Sequence[ChatRequest]) -> list[Completion]:
    return [await chat.complete(request) for request in requests]


async def together(chat: ChatService, requests: Sequence[ChatRequest]) -> list[Any]:
    return await asyncio.gather(*(chat.complete(r) for r in requests), return_exceptions=True)


def batched_steps(engine: FakeEngine) -> list[tuple[int, ...]]:
    return [rows for rows in engine.steps if len(rows) > 1]


def test_concurrent_requests_decode_together_up_to_max_batch() -> None:
    engine = FakeEngine(delay=0.002)
    chat = service(engine, max_batch=3)
    requests = [ask(f"request {i} " + "word " * i) for i in range(5)]
    results = asyncio.run(together(chat, requests))
    chat.worker.stop()
    assert [r.text for r in results] == [f"You said: request {i} " + "word " * i for i in range(5)]
    assert batched_steps(engine), "no step decoded two rows together"
    assert max(len(rows) for rows in engine.steps) == 3  # never more than --max-batch


def test_eight_requests_with_their_own_parameters_each_get_what_they_get_alone() -> None:
    """Temperatures, seeds, stops and max_tokens are per row: the fake's reply depends on the
    row's own seed and temperature (a sampled reply names them), never on its neighbours."""
    requests = [
        ask("alpha beta gamma delta", temperature=0.0),
        ask("alpha beta gamma delta", temperature=0.7, seed=1),
        ask("alpha beta gamma delta", temperature=0.7, seed=2),
        ask("alpha beta gamma delta", temperature=1.3, seed=1),
        ask("alpha beta gamma delta", stop=("gamma",)),
        ask("alpha beta gamma delta", max_tokens=3),
        ask("one two three four five six", temperature=0.2, seed=9, stop=("five",)),
        ask("short", logprobs=True, top_logprobs=2),
    ]
    engine = FakeEngine(delay=0.002)
    chat = service(engine, max_batch=8)
    solo = asyncio.run(alone(chat, requests))
    batched = asyncio.run(together(chat, requests))
    chat.worker.stop()
    assert len(batched_steps(engine)) > 3 and max(len(s) for s in engine.steps) >= 6
    for one, many in zip(solo, batched, strict=True):
        assert isinstance(many, Completion)
        assert (many.text, many.finish_reason, many.usage.completion_tokens, many.logprobs) == (
            one.text, one.finish_reason, one.usage.completion_tokens, one.logprobs)
    assert len({r.text for r in solo}) == 8  # the parameters did matter


def test_a_failing_row_fails_alone_and_the_batch_goes_on() -> None:
    engine = FakeEngine(delay=0.002)
    chat = service(engine, max_batch=4)
    requests = [ask("first row keeps going on and on"), ask("this one breaks [[fail-row@3]]"),
                ask("third row keeps going on and on")]
    results = asyncio.run(together(chat, requests))
    chat.worker.stop()
    assert isinstance(results[1], EngineFailure) and "injected row failure" in str(results[1])
    assert results[0].text == "You said: first row keeps going on and on"
    assert results[2].text == "You said: third row keeps going on and on"
    assert any(len(rows) == 3 for rows in engine.steps)  # it failed inside a batch


def test_a_failing_step_fails_every_running_row_with_503_and_serving_goes_on() -> None:
    engine = FakeEngine(delay=0.002)
    chat = service(engine, max_batch=4)

    async def run() -> tuple[list[Any], Completion]:
        failed = await together(chat, [ask("a b c d e f g h"), ask("x [[fail-engine@3]]"),
                                       ask("i j k l m n o p")])
        return failed, await chat.complete(ask("after"))

    failed, after = asyncio.run(run())
    chat.worker.stop()
    assert all(isinstance(r, EngineUnavailable) for r in failed), failed
    assert after.text == "You said: after"
    assert chat.status().state == "idle" and chat.worker.alive


def test_a_failing_step_is_503_with_retry_after_over_http() -> None:
    client = ConnectedTestClient(build(Settings(engine="fake"), engine=FakeEngine()))
    body = {"model": GEMMA, "messages": [{"role": "user", "content": "x [[fail-engine@1]]"}]}
    failed = client.simulate_post("/v1/chat/completions", json=body)
    assert failed.status_code == 503 and failed.json["error"]["code"] == "engine_unavailable"
    assert failed.headers["retry-after"]
    assert client.simulate_post("/v1/chat/completions", json={
        "model": GEMMA, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200


def test_a_cancelled_row_leaves_at_the_next_step_and_the_others_are_untouched() -> None:
    engine = FakeEngine(delay=0.002)
    chat = service(engine, max_batch=4)

    async def run() -> tuple[Completion, Completion]:
        long_one = asyncio.ensure_future(chat.complete(ask("word " * 400)))
        short = asyncio.ensure_future(chat.complete(ask("short and sweet")))
        await asyncio.sleep(0.01)
        stream = await chat.open_stream(ask("leaves " * 400))
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await stream.aclose()  # the client went away mid-stream
        return await long_one, await short

    long_one, short = asyncio.run(run())
    chat.worker.stop()
    assert short.text == "You said: short and sweet"
    assert long_one.text == "You said: " + "word " * 400
    released = dict(engine.released)
    assert released == {1: True, 2: True, 3: False}


def test_a_request_for_another_model_waits_for_the_batch_to_drain() -> None:
    engine = FakeEngine(delay=0.002)
    chat = service(engine, max_batch=4)

    async def run() -> list[Any]:
        first = [asyncio.ensure_future(chat.complete(ask(f"gemma {i} " + "w " * 30)))
                 for i in range(2)]
        await asyncio.sleep(0.01)
        other = asyncio.ensure_future(chat.complete(ask("qwen please", model=QWEN)))
        return [*await asyncio.gather(*first), await other]

    results = asyncio.run(run())
    chat.worker.stop()
    assert results[2].model.endswith("Qwen3-VL-4B-Instruct-4bit")
    assert engine.loads == ["mlx-community/gemma-3-4b-it-4bit",
                            "mlx-community/Qwen3-VL-4B-Instruct-4bit"]
    # the swap came after both gemma rows were released: rows 1 and 2 before row 3 admitted
    assert [row for row, _ in engine.released][:2] == [1, 2]


def test_a_prompt_joining_is_prefilled_in_budgeted_chunks_while_rows_decode() -> None:
    """A long prompt joins in chunks of --prefill-chunk tokens per step; the running row decodes
    at every one of those steps."""
    engine = FakeEngine(delay=0.001, prefill_chunk=4)
    chat = service(engine, max_batch=2)

    async def run() -> None:
        running = asyncio.ensure_future(chat.complete(ask("w " * 100, max_tokens=80)))
        while not engine.steps or not engine.steps[-1]:
            await asyncio.sleep(0.001)
        await chat.complete(ask("long " * 40, max_tokens=2))
        await running

    asyncio.run(run())
    chat.worker.stop()
    joined = [i for i, total in enumerate(engine.prefills) if total and engine.steps[i]]
    assert len(joined) >= 10  # ~50 prompt tokens at 4 per step, each step also decoding
    assert all(engine.prefills[i] <= 4 and engine.steps[i] for i in joined)


def test_a_dead_generation_thread_fails_everyone_and_health_says_down(monkeypatch: Any) -> None:
    engine = FakeEngine(delay=0.002)
    chat = service(engine, max_batch=2)

    def broken() -> None:
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(chat.worker, "_close_cancelled", broken)

    async def run() -> list[Any]:
        with contextlib.suppress(Exception):
            await chat.complete(ask("first"))
        return await together(chat, [ask("second")])

    results = asyncio.run(asyncio.wait_for(run(), 10))  # never a hang
    assert isinstance(results[0], EngineUnavailable)
    assert chat.status().state == "down"
    client = ConnectedTestClient(build(Settings(engine="fake"), engine=engine))
    assert client.simulate_get("/health").status_code == 200  # a fresh app is fine


@pytest.mark.parametrize("max_batch", [1, 4])
def test_swaps_between_two_clients_on_two_models_never_starve(max_batch: int) -> None:
    engine = FakeEngine(delay=0.001)
    chat = service(engine, max_batch=max_batch, swap_batch=2)

    async def client(model: str, n: int) -> list[str]:
        return [(await chat.complete(ask(f"{model} {i}", model=model))).text for i in range(n)]

    async def run() -> list[list[str]]:
        return list(await asyncio.gather(client(GEMMA, 6), client(QWEN, 6)))

    texts = asyncio.run(asyncio.wait_for(run(), 30))
    chat.worker.stop()
    assert texts == [[f"You said: {m} {i}" for i in range(6)] for m in (GEMMA, QWEN)]


def test_health_shows_the_running_rows() -> None:
    """The service's status while three rows run and a fourth waits; /health carries the fields."""
    engine = FakeEngine(delay=0.005)
    app = build(Settings(engine="fake", max_batch=3), engine=engine)
    client = ConnectedTestClient(app)
    seen: list[dict[str, Any]] = []

    async def run() -> None:
        service = build_service(Settings(engine="fake", max_batch=3), engine=engine)
        tasks = [asyncio.ensure_future(service.complete(ask("w " * 60))) for _ in range(4)]
        while len(engine.admitted) < 3:
            await asyncio.sleep(0.002)
        status = service.status()
        seen.append({"running": status.running, "queued": status.queued, "state": status.state,
                     "max_batch": status.max_batch})
        await asyncio.gather(*tasks)
        service.worker.stop()

    asyncio.run(run())
    assert seen == [{"running": 3, "queued": 1, "state": "busy", "max_batch": 3}]
    health = client.simulate_get("/health").json
    assert (health["running"], health["max_batch"]) == (0, 3)
