"""Request parameters honoured on real MLX (SmolLM2, the built-in model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon.testing
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow
PARIS = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a short story."}]


@pytest.fixture(scope="module")
def client(smollm_client: falcon.testing.TestClient) -> falcon.testing.TestClient:
    return smollm_client


def chat(client: falcon.testing.TestClient, messages: Any = PARIS, **body: Any) -> dict[str, Any]:
    result = client.simulate_post("/v1/chat/completions",
                                  json={"model": "smollm", "messages": messages, **body})
    assert result.status_code == 200, result.text
    return dict(result.json)


def text(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


def test_seed_reproduces_and_varies(client: falcon.testing.TestClient) -> None:
    runs = [text(chat(client, STORY, temperature=1.0, seed=seed, max_tokens=8)) for seed in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_stop_streaming_and_not(client: falcon.testing.TestClient) -> None:
    done = chat(client, temperature=0, stop=[" Paris", "zzz"], max_tokens=12)
    assert text(done) == "The capital of France is" and done["choices"][0]["finish_reason"] == "stop"
    streamed = client.simulate_post("/v1/chat/completions", json={
        "model": "smollm", "messages": PARIS, "temperature": 0, "stop": " Paris", "stream": True,
        "max_tokens": 12}).text
    chunks = [json.loads(b[6:]) for b in streamed.split("\n\n") if b.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text(done)


def test_max_completion_tokens_wins_and_cuts_with_length(client: falcon.testing.TestClient) -> None:
    done = chat(client, temperature=0, max_tokens=9, max_completion_tokens=3)
    assert done["usage"]["completion_tokens"] == 3 and done["choices"][0]["finish_reason"] == "length"


def test_context_overflow_is_400_with_the_numbers(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/chat/completions", json={
        "model": "smollm", "messages": PARIS, "max_tokens": 9000})
    assert result.status_code == 400
    assert result.json["error"]["code"] == "context_length_exceeded"
    assert "8192" in result.json["error"]["message"] and result.json["error"]["param"] == "messages"


def test_logprobs_shape_and_greedy_token_is_the_most_likely(client: falcon.testing.TestClient) -> None:
    done = chat(client, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
    content = done["choices"][0]["logprobs"]["content"]
    assert len(content) == done["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 3 and entry["logprob"] <= 0
        assert entry["logprob"] == pytest.approx(max(t["logprob"] for t in entry["top_logprobs"]))
    assert "".join(entry["token"] for entry in content).startswith("The capital")


def test_logit_bias_bans_and_forces_tokens(client: falcon.testing.TestClient, smollm_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(smollm_dir / "tokenizer.json"))
    paris = tokenizer.encode(" Paris").ids[0]
    banned = text(chat(client, temperature=0, max_tokens=12, logit_bias={str(paris): -100}))
    assert "Paris" not in banned
    cat = tokenizer.encode(" cat").ids[0]
    forced = chat(client, temperature=0, max_tokens=3, logit_bias={str(cat): 100})
    assert text(forced) == " cat cat cat"


def test_penalties_and_sampler_extensions_change_or_keep_output(
        client: falcon.testing.TestClient) -> None:
    greedy = text(chat(client, STORY, temperature=0, max_tokens=16))
    assert text(chat(client, STORY, temperature=1.0, top_k=1, max_tokens=16)) == greedy
    penalised = text(chat(client, STORY, temperature=0, max_tokens=16, presence_penalty=2,
                          frequency_penalty=2, repetition_penalty=1.5))
    assert penalised != greedy


def test_json_object(client: falcon.testing.TestClient) -> None:
    done = chat(client, [{"role": "user", "content": "Describe a cat as JSON."}], temperature=0,
                max_tokens=40, response_format={"type": "json_object"})
    if done["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text(done)), dict)


schemas = st.fixed_dictionaries({
    "type": st.just("object"),
    "properties": st.dictionaries(
        st.sampled_from(["name", "age", "ok", "color"]),
        st.sampled_from([{"type": "string", "maxLength": 8}, {"type": "integer"},
                         {"type": "boolean"}, {"enum": ["red", "green"]}]),
        min_size=1, max_size=3),
}).map(lambda schema: {**schema, "required": sorted(schema["properties"]),
                       "additionalProperties": False})


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=schemas)
def test_json_schema_output_always_validates(client: falcon.testing.TestClient,
                                             schema: dict[str, Any]) -> None:
    done = chat(client, [{"role": "user", "content": "Give me a record."}], temperature=0,
                max_tokens=48, response_format={"type": "json_schema", "json_schema": {
                    "name": "record", "schema": schema, "strict": True}})
    assert done["choices"][0]["finish_reason"] == "stop", text(done)
    jsonschema.validate(json.loads(text(done)), schema)


def test_a_schema_llguidance_cannot_compile_is_400(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/chat/completions", json={
        "model": "smollm", "messages": PARIS, "stream": True, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}})
    assert result.status_code == 400 and result.json["error"]["param"] == "response_format"
