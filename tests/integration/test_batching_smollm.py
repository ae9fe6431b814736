"""Continuous batching on real MLX (SmolLM2), through the HTTP API: eight concurrent requests
with their own temperatures, seeds, stops and lengths each get what they get alone, and they
did decode together."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.metrics import PrometheusMetrics
from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.families import GENERIC
from mlx_server.domain.models import ModelRef

pytestmark = pytest.mark.slow

QUESTIONS = ["Name a colour.", "What is two plus two?", "Say hello in French.",
             "Name a fruit.", "What is the capital of Italy?", "Count to five.",
             "Name an animal that swims.", "Write a very short greeting."]
PARAMETERS: list[dict[str, Any]] = [
    {"temperature": 0},
    {"temperature": 0.8, "seed": 1},
    {"temperature": 0.8, "seed": 2},
    {"temperature": 1.2, "seed": 1, "top_p": 0.9},
    {"temperature": 0, "stop": [" "]},
    {"temperature": 0.5, "seed": 7, "top_k": 5, "max_tokens": 4},
    {"temperature": 0, "frequency_penalty": 1.5, "logit_bias": {"11": -100}},
    {"temperature": 0.7, "seed": 3, "min_p": 0.1, "logprobs": True, "top_logprobs": 2},
]


@pytest.fixture(scope="module")
def app(smollm_dir: Path) -> Any:
    catalog = StaticCatalog({"smollm": ModelRef("smollm", str(smollm_dir), GENERIC.name, 8192)})
    metrics = PrometheusMetrics()
    built = build(Settings(max_batch=8, prefix_cache=False), engine=MlxEngine(prefix_cache=False),
                  catalog=catalog, metrics=metrics)
    built.test_metrics = metrics  # type: ignore[attr-defined]
    return built


def body(question: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"model": "smollm", "messages": [{"role": "user", "content": question}],
            "max_tokens": 10, **parameters}


def answer(result: dict[str, Any]) -> tuple[str, str, int, Any]:
    choice = result["choices"][0]
    return (choice["message"]["content"], choice["finish_reason"],
            result["usage"]["completion_tokens"],
            [(t["token"], t["logprob"]) for t in (choice.get("logprobs") or {}).get("content", [])])


def test_eight_concurrent_requests_each_get_what_they_get_alone(app: Any) -> None:
    async def run() -> tuple[list[Any], list[Any]]:
        async with falcon.testing.ASGIConductor(app) as conductor:
            async def post(question: str, parameters: dict[str, Any]) -> Any:
                # streamed: the connection stays open until the answer is whole (a plain
                # simulate_post hangs up at once, which the server takes as a client leaving)
                streamed = await conductor.simulate_post(
                    "/v1/chat/completions", json=body(question, parameters), host="127.0.0.1",
                    _stream_result=True)
                await streamed._task
                await streamed.finalize()
                assert streamed.status_code == 200
                return answer(json.loads(await streamed.stream.read()))

            alone = [await post(q, p) for q, p in zip(QUESTIONS, PARAMETERS, strict=True)]
            together = await asyncio.gather(*(post(q, p) for q, p in
                                              zip(QUESTIONS, PARAMETERS, strict=True)))
            return alone, list(together)

    alone, together = asyncio.run(run())
    for index, (one, many) in enumerate(zip(alone, together, strict=True)):
        text, reason, tokens, logprobs = many
        assert (text, reason, tokens) == one[:3], (index, PARAMETERS[index])
        for (token, lp), (token_alone, lp_alone) in zip(logprobs, one[3], strict=True):
            assert token == token_alone and lp == pytest.approx(lp_alone, abs=1e-3)
    assert alone[4][1] == "stop" and " " not in alone[4][0]  # the stop sequence held
    assert alone[5][2] <= 4  # its own max_tokens
    assert len({a[0] for a in alone[1:4]}) == 3  # seeds and temperatures mattered
    # they did decode together: the batch-size histogram saw steps of more than four rows
    scrape = app.test_metrics.render().decode()
    big = [line for line in scrape.splitlines()
           if line.startswith("mlx_server_batch_size_bucket") and 'le="4.0"' in line]
    total = [line for line in scrape.splitlines()
             if line.startswith("mlx_server_batch_size_count")]
    assert big and total and float(big[0].split()[-1]) < float(total[0].split()[-1])
