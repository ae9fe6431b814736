"""API key, CORS, idle unload and a full queue, on the fake engine."""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build, build_service
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import ChatRequest, Message, Role, TextPart
from tests.e2e.conftest import start_server, stop_server
from tests.support.fakes import FixedClock
from tests.support.http import ConnectedTestClient

CHAT = {"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}


def test_api_key_guards_v1_but_not_health() -> None:
    client = ConnectedTestClient(build(Settings(engine="fake", api_key="s3cret"),
                                             engine=FakeEngine()))
    denied = client.simulate_post("/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401 and denied.json["error"]["code"] == "invalid_api_key"
    assert client.simulate_get("/v1/models").status_code == 401
    assert client.simulate_get("/health").status_code == 200
    allowed = client.simulate_post("/v1/chat/completions", json=CHAT,
                                   headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200


def test_cors_only_for_configured_origins() -> None:
    closed = ConnectedTestClient(build(Settings(engine="fake"), engine=FakeEngine()))
    assert "access-control-allow-origin" not in closed.simulate_get(
        "/v1/models", headers={"Origin": "https://evil.example"}).headers
    opened = ConnectedTestClient(build(
        Settings(engine="fake", cors_origins=("http://localhost:3000",)), engine=FakeEngine()))
    preflight = opened.simulate_options("/v1/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_idle_unload_frees_the_model_and_the_next_request_loads_it() -> None:
    clock = FixedClock()
    engine = FakeEngine()
    service = build_service(Settings(engine="fake"), engine=engine, clock=clock)
    request = ChatRequest("gemma", (Message(Role.USER, (TextPart("hi"),)),))

    async def run() -> None:
        await service.complete(request)
        assert not await service.unload_if_idle(60)
        clock.value += 61
        assert await service.unload_if_idle(60) and engine.loaded is None
        await service.complete(request)
        assert engine.loaded is not None and engine.loads.count(engine.loaded.id) == 2
        service.worker.stop()

    asyncio.run(run())


def test_a_full_queue_answers_503_with_retry_after() -> None:
    process, base = start_server(["--engine", "fake", "--fake-delay", "0.2", "--max-queue", "1"])
    try:
        def ask() -> httpx.Response:
            return httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            asked = [pool.submit(ask) for _ in range(4)]
            health = httpx.get(f"{base}/health").json()
            while health["state"] != "busy" and not all(a.done() for a in asked):
                health = httpx.get(f"{base}/health").json()
            answers = [a.result() for a in asked]
        assert health["state"] == "busy" and health["queued"] <= 1  # seen while generating
        busy = [a for a in answers if a.status_code == 503]
        assert busy and all(a.json()["error"]["code"] == "server_busy" for a in busy)
        assert all(a.headers["retry-after"] == "5" for a in busy)
        assert any(a.status_code == 200 for a in answers)
        assert ask().status_code == 200  # and it keeps serving
    finally:
        stop_server(process)


def test_a_client_that_disconnects_mid_stream_frees_the_model_at_once(tmp_path: object) -> None:
    import json
    import time
    from pathlib import Path

    replies = Path(str(tmp_path)) / "replies.json"
    replies.write_text(json.dumps([" ".join(["word"] * 200), "short answer"]))
    process, base = start_server(["--engine", "fake", "--fake-delay", "0.05",
                                  "--fake-replies", str(replies)])
    try:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={**CHAT, "stream": True},
                          timeout=30) as stream:
            for index, _ in enumerate(stream.iter_lines()):
                if index > 6:
                    break  # leave with ~190 tokens (~10 s) still to generate
        left = time.monotonic()
        answer = httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=30)
        waited = time.monotonic() - left
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "short answer"
        assert waited < 2.0, f"the next request waited {waited:.2f} s"
        print(f"\ncancel-to-next-answer: {waited:.3f} s")
    finally:
        stop_server(process)


def test_the_spec_declares_bearer_auth_exactly_where_the_server_enforces_it() -> None:
    import yaml

    from mlx_server.app.bootstrap import spec_text

    spec = yaml.safe_load(spec_text())
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    client = ConnectedTestClient(build(Settings(engine="fake", api_key="s3cret"),
                                       engine=FakeEngine()))
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            declared = {"bearerAuth": []} in operation.get("security", [])
            url = path.replace("{model}", "gemma")
            answer = client.simulate_request(method.upper(), url, json=CHAT)
            assert (answer.status_code == 401) == declared, (method, path, answer.status_code)
            if declared:  # optional: a server started without a key needs none
                assert {} in operation["security"]
