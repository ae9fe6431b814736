"""Request IDs, the access log, /metrics and the shutdown refusal, in process on the fake engine."""

from __future__ import annotations

import asyncio
import logging

import falcon.testing
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.http import observability
from mlx_server.adapters.metrics import PrometheusMetrics
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient

USER = [{"role": "user", "content": "hi there"}]
FIELDS = {"id", "method", "route", "status", "model", "prompt_tokens", "completion_tokens",
          "cached_tokens", "ttft", "total"}


@pytest.fixture
def metrics() -> PrometheusMetrics:
    return PrometheusMetrics()


@pytest.fixture
def client(metrics: PrometheusMetrics) -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(engine="fake"), engine=FakeEngine(),
                                           metrics=metrics))


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [record.access for record in caplog.records  # type: ignore[attr-defined]
            if record.name == "mlx_server.access" and hasattr(record, "access")]


def chat(client: falcon.testing.TestClient, **body: object) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions",
                                json={"model": "gemma", "messages": USER, **body})


def test_request_id_is_echoed_sanitised_or_created(client: falcon.testing.TestClient) -> None:
    given = client.simulate_get("/health", headers={"X-Request-ID": "abc-123.x_Y"})
    assert given.headers["x-request-id"] == "abc-123.x_Y"
    dirty = client.simulate_get("/health", headers={"X-Request-ID": "a b<c>\"d" + "e" * 300})
    assert dirty.headers["x-request-id"] == "abcd" + "e" * 124
    first = client.simulate_get("/health").headers["x-request-id"]
    second = client.simulate_get("/health").headers["x-request-id"]
    assert first != second and len(first) == 32
    assert client.simulate_get("/nope").headers["x-request-id"]  # errors carry one too


def test_one_access_line_per_request(client: falcon.testing.TestClient,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mlx_server.access")
    result = chat(client, stream=False)
    assert result.status_code == 200
    client.simulate_get("/nope")
    lines = access_lines(caplog)
    assert len(lines) == 2
    done, missing = lines
    assert set(done) == FIELDS
    assert done["id"] == result.headers["x-request-id"]
    assert (done["method"], done["route"], done["status"]) == ("POST", "/v1/chat/completions", "200")
    assert float(done["total"]) > 0
    assert (missing["route"], missing["status"]) == ("unmatched", "404")
    message = next(r.getMessage() for r in caplog.records if r.name == "mlx_server.access")
    assert message.startswith(f"id={done['id']} method=POST route=/v1/chat/completions status=200")


def test_access_line_has_the_model_and_tokens(client: falcon.testing.TestClient,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mlx_server.access")
    usage = chat(client).json["usage"]
    chat(client, stream=True)
    done, streamed = access_lines(caplog)
    assert done["model"] == "mlx-community/gemma-3-4b-it-4bit"
    assert int(done["prompt_tokens"]) == usage["prompt_tokens"]
    assert int(done["completion_tokens"]) == usage["completion_tokens"]
    assert done["cached_tokens"] == "0"
    assert streamed["model"] == done["model"] and int(streamed["completion_tokens"]) > 0
    assert 0 <= float(streamed["ttft"]) <= float(streamed["total"])


def test_a_stream_is_logged_once_when_it_ends(client: falcon.testing.TestClient,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mlx_server.access")
    result = chat(client, stream=True)
    assert result.text.endswith("data: [DONE]\n\n")
    (line,) = access_lines(caplog)
    assert set(line) == FIELDS and line["status"] == "200"
    assert line["id"] == result.headers["x-request-id"]


def test_metrics_exposes_http_and_generation_counters(client: falcon.testing.TestClient) -> None:
    assert chat(client).status_code == 200
    client.simulate_get("/nope")
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(result.text)}
    requests = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
                for s in families["mlx_server_http_requests"].samples if s.name.endswith("_total")}
    assert requests[("POST", "/v1/chat/completions", "200")] == 1
    assert requests[("GET", "unmatched", "404")] == 1
    assert "mlx_server_http_request_duration_seconds" in families
    loaded = families["mlx_server_loaded_model"].samples
    assert [s.labels["model"] for s in loaded] == ["mlx-community/gemma-3-4b-it-4bit"]
    swaps = [s for s in families["mlx_server_model_swaps"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in swaps) >= 1


def test_methods_a_client_invents_share_one_label(client: falcon.testing.TestClient) -> None:
    """Each new method name used to add series to /metrics for good: a cardinality flood."""
    for method in ("QWERTYABC", "get", "X" * 50, "BREW"):
        assert client.simulate_request(method, "/health").status_code < 500
    text = client.simulate_get("/metrics").text
    methods = {s.labels["method"] for f in text_string_to_metric_families(text) for s in f.samples
               if "method" in s.labels}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods


def test_port_metrics_are_recorded(metrics: PrometheusMetrics) -> None:
    metrics.generation("m", prompt_tokens=10, cached_tokens=4, completion_tokens=5, ttft=0.2,
                       decode_seconds=0.5)
    metrics.cancelled("m", "prefill")
    metrics.queue_depth(3)
    values = {s.name: s.value for f in text_string_to_metric_families(metrics.render().decode())
              for s in f.samples if not s.labels.get("le")}
    assert values["mlx_server_cached_tokens_total"] == 4
    assert values["mlx_server_completion_tokens_total"] == 5
    assert values["mlx_server_cancellations_total"] == 1
    assert values["mlx_server_queue_depth"] == 3
    assert values["mlx_server_generation_tokens_per_second_sum"] == pytest.approx(8.0)


def test_two_apps_in_one_process_do_not_clash() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.cancelled("m", "decode")
    assert b'mlx_server_cancellations_total{model="m",phase="decode"} 1.0' in first.render()
    assert b"mlx_server_cancellations_total{" not in second.render()


def test_draining_refuses_new_work_with_503(client: falcon.testing.TestClient) -> None:
    app = client.app.app  # the Falcon app inside DisconnectWatch
    gate = next(m for m in app._unprepared_middleware  # type: ignore[attr-defined]
                if isinstance(m, observability.ObservabilityMiddleware)).gate
    gate.begin()
    result = chat(client)
    assert result.status_code == 503
    assert result.json["error"]["code"] == "server_shutting_down"
    assert result.json["error"]["type"] == "server_error"
    assert result.headers["retry-after"] == "5"
    health = client.simulate_get("/health")  # probes still answer, and say why work is refused
    assert (health.status_code, health.json["state"]) == (200, "draining")
    assert client.simulate_get("/metrics").status_code == 200


def queue_depth(text: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "mlx_server_queue_depth")


def test_the_queue_depth_gauge_counts_the_waiting_requests_and_returns_to_zero(
        metrics: PrometheusMetrics) -> None:
    """The gauge was set before a request was enqueued (so it left that one out) and never
    lowered: the worker now reports each change, on enqueue, dequeue and drop."""
    # one row at a time, so that the others wait (with batching they would all run)
    app = build(Settings(engine="fake", max_batch=1), engine=FakeEngine(delay=0.05),
                metrics=metrics)
    waiting = 3

    async def ask(conductor: falcon.testing.ASGIConductor) -> str:
        streamed = await conductor.simulate_post(
            "/v1/chat/completions", json={"model": "gemma", "messages": USER},
            host="127.0.0.1", _stream_result=True)
        await streamed._task  # the whole response, as ConnectedTestClient waits for it
        await streamed.finalize()
        return streamed.status

    async def depth(conductor: falcon.testing.ASGIConductor) -> float:
        return queue_depth((await conductor.simulate_get("/metrics", host="127.0.0.1")).text)

    async def run() -> tuple[float, list[str], float]:
        async with falcon.testing.ASGIConductor(app) as conductor:
            asked = [asyncio.create_task(ask(conductor)) for _ in range(waiting + 1)]
            seen = await depth(conductor)
            while seen < waiting and not all(task.done() for task in asked):
                await asyncio.sleep(0.005)
                seen = await depth(conductor)
            statuses = await asyncio.gather(*asked)
            return seen, statuses, await depth(conductor)

    seen, statuses, after = asyncio.run(run())
    assert statuses == ["200 OK"] * (waiting + 1)
    assert seen == waiting  # one generating, the others queued
    assert after == 0
