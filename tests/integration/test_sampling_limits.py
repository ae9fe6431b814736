"""Hostile sampling values over HTTP: a 400 naming the parameter and its range, before anything
reaches native code, on the fake engine (32,000 token ids) and on real MLX with SmolLM2
(49,152), where an out-of-range `logit_bias` key used to kill the process."""

from __future__ import annotations

import json
from typing import Any

import falcon.testing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_server.adapters.fake_engine import VOCAB_SIZE, FakeEngine
from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient

SMOLLM_VOCAB = 49152
HI = [{"role": "user", "content": "Hi"}]
RECURSIVE = [
    {"$ref": "#"},
    {"$defs": {"node": {"$ref": "#/$defs/node"}}, "$ref": "#/$defs/node"},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]},
]
BROKEN_REFS = [{"$ref": "#/$defs/missing"}, {"$ref": "http://example.com/schema.json"},
               {"type": "object", "properties": {"a": {"$ref": "https://example.com/a#/b"}}}]
TREE = {"$defs": {"node": {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 4},
    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
    "required": ["name"], "additionalProperties": False}}, "$ref": "#/$defs/node"}


def post(client: falcon.testing.TestClient, model: str, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={
        "model": model, "messages": HI, "max_tokens": 1, "temperature": 0, **body})


def assert_400(result: falcon.testing.Result, param: str, *words: str) -> None:
    assert result.status_code == 400, result.text
    error = result.json["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value"), error
    for word in words:
        assert word in error["message"], error["message"]


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.fixture(scope="module")
def fake() -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(engine="fake"), engine=FakeEngine()))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("token", [VOCAB_SIZE, VOCAB_SIZE + 1, 100257, 999_999_999])
def test_fake_logit_bias_key_past_the_vocabulary_is_400(fake: falcon.testing.TestClient,
                                                       token: int, stream: bool) -> None:
    result = post(fake, "smollm", logit_bias={str(token): -100}, stream=stream)
    assert_400(result, "logit_bias", f"0 to {VOCAB_SIZE - 1}")


@pytest.mark.parametrize("stream", [False, True])
def test_fake_top_k_of_the_vocabulary_size_is_400(fake: falcon.testing.TestClient,
                                                  stream: bool) -> None:
    assert_400(post(fake, "smollm", top_k=VOCAB_SIZE, stream=stream), "top_k",
               f"to {VOCAB_SIZE - 1}")
    assert post(fake, "smollm", top_k=VOCAB_SIZE - 1, stream=stream).status_code == 200


def test_fake_values_inside_the_bounds_answer(fake: falcon.testing.TestClient) -> None:
    result = post(fake, "smollm", logit_bias={"0": -100, str(VOCAB_SIZE - 1): 100},
                  seed=2**63 - 1, logprobs=True, top_logprobs=20)
    assert result.status_code == 200, result.text


def test_fake_seed_past_64_bits_is_400(fake: falcon.testing.TestClient) -> None:
    assert_400(post(fake, "smollm", seed=2**64), "seed", str(2**63 - 1))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("schema", RECURSIVE)
def test_fake_schema_recursing_forever_is_400(fake: falcon.testing.TestClient, schema: Any,
                                              stream: bool) -> None:
    result = post(fake, "smollm", response_format=schema_format(schema), stream=stream)
    assert_400(result, "response_format", "recursion")


# --- real MLX, SmolLM2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(real_catalog: StaticCatalog) -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=real_catalog))


@pytest.mark.slow
@pytest.mark.parametrize("token", [SMOLLM_VOCAB, SMOLLM_VOCAB + 1, 100257, 999_999_999])
def test_real_logit_bias_key_past_the_vocabulary_is_400_and_the_server_lives(
        real: falcon.testing.TestClient, token: int) -> None:
    assert_400(post(real, "smollm", logit_bias={str(token): -100}), "logit_bias",
               f"0 to {SMOLLM_VOCAB - 1}")
    assert_400(post(real, "smollm", logit_bias={str(token): -100}, stream=True), "logit_bias")
    edge = post(real, "smollm", logit_bias={str(SMOLLM_VOCAB - 1): -100, "0": -100})
    assert edge.status_code == 200, edge.text  # the same process, still serving


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_real_top_k_of_the_vocabulary_size_is_400(real: falcon.testing.TestClient,
                                                  stream: bool) -> None:
    assert_400(post(real, "smollm", top_k=SMOLLM_VOCAB, temperature=1.0, stream=stream), "top_k",
               f"to {SMOLLM_VOCAB - 1}")
    ok = post(real, "smollm", top_k=SMOLLM_VOCAB - 1, temperature=1.0, seed=-5, stream=stream)
    assert ok.status_code == 200, ok.text


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["logit_bias", "top_k", "top_logprobs", "seed"]),
       value=st.one_of(st.integers(), st.sampled_from([SMOLLM_VOCAB - 1, SMOLLM_VOCAB, 100257,
                                                       -1, 0, 2**63, -(2**63)])))
def test_real_any_integer_is_never_a_server_error(real: falcon.testing.TestClient, field: str,
                                                  value: int) -> None:
    body: dict[str, Any] = {
        "logit_bias": {"logit_bias": {str(value): 5}}, "top_k": {"top_k": value, "temperature": 1},
        "top_logprobs": {"logprobs": True, "top_logprobs": value},
        "seed": {"seed": value, "temperature": 1}}[field]
    result = post(real, "smollm", **body)
    assert result.status_code in (200, 400), result.text
    if result.status_code == 400:
        assert result.json["error"]["param"] == field


@pytest.mark.slow
@pytest.mark.parametrize("schema", RECURSIVE + BROKEN_REFS)
def test_real_unusable_ref_is_400_naming_response_format(real: falcon.testing.TestClient,
                                                         schema: Any) -> None:
    for stream in (False, True):
        result = post(real, "smollm", response_format=schema_format(schema), stream=stream)
        assert_400(result, "response_format")


@pytest.mark.slow
def test_real_recursive_tree_schema_generates_valid_json(real: falcon.testing.TestClient) -> None:
    import jsonschema

    result = post(real, "smollm", response_format=schema_format(TREE), max_tokens=16,
                  messages=[{"role": "user", "content": "A family tree as JSON."}])
    assert result.status_code == 200, result.text
    choice = result.json["choices"][0]
    if choice["finish_reason"] == "stop":
        jsonschema.validate(json.loads(choice["message"]["content"]), TREE)
    else:
        assert choice["message"]["content"].startswith("{")
