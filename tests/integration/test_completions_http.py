"""The legacy completions API (`POST /v1/completions`) in process, on the fake engine: a raw
prompt through the chat pipeline (stops, max_tokens, logprobs, echo), OpenAI's shapes, and a 400
naming each parameter it cannot honour."""

from __future__ import annotations

import json
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine, tokenize
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.fakes import CountingIds, FixedClock
from tests.support.http import ConnectedTestClient

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = "def add(a, b):"


def client_for(*replies: str) -> falcon.testing.TestClient:
    app = build(Settings(engine="fake"), engine=FakeEngine(list(replies)), clock=FixedClock(),
                ids=CountingIds())
    return ConnectedTestClient(app)


def complete(client: falcon.testing.TestClient, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/completions", json={"model": "smollm", "prompt": PROMPT,
                                                         **body})


def chunks(result: falcon.testing.Result) -> list[Any]:
    assert result.status_code == 200, result.text
    assert result.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in result.text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b[6:]) for b in blocks[:-1]]


def assert_error(result: falcon.testing.Result, code: str, param: str) -> None:
    assert result.status_code == 400, result.text
    error = result.json["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["code"], error["param"]) == (code, param)


def test_a_completion_continues_the_raw_prompt() -> None:
    body = complete(client_for("\n    return a + b")).json
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == SMOLLM and body["system_fingerprint"] == "mlx-server"
    assert body["choices"] == [{"text": "\n    return a + b", "index": 0, "logprobs": None,
                                "finish_reason": "stop"}]
    # no chat template: the prompt is the raw text's tokens, nothing more
    assert body["usage"] == {"prompt_tokens": len(tokenize(PROMPT)), "completion_tokens": 4,
                             "total_tokens": len(tokenize(PROMPT)) + 4,
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_a_list_of_one_prompt_is_the_prompt() -> None:
    client = client_for("x")
    assert complete(client, prompt=[PROMPT]).json["usage"] == complete(client).json["usage"]


def test_max_tokens_defaults_to_16_and_cuts_with_length() -> None:
    client = client_for(" ".join(f"w{i}" for i in range(40)))
    body = complete(client).json
    assert (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]) == (16, "length")
    body = complete(client, max_tokens=3).json
    assert body["choices"][0]["text"] == "w0 w1 w2"
    assert (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]) == (3, "length")


def test_a_stop_sequence_ends_the_completion_and_is_not_returned() -> None:
    client = client_for("\n    return a + b\n\ndef sub(a, b):")
    for stop in ("\ndef", ["zzz", "\ndef"]):
        choice = complete(client, stop=stop).json["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == ("\n    return a + b\n", "stop")
    streamed = chunks(complete(client, stop="\ndef", stream=True))
    assert "".join(c["choices"][0]["text"] for c in streamed) == "\n    return a + b\n"
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_echo_puts_the_prompt_in_front() -> None:
    client = client_for(" return 1")
    assert complete(client, echo=True).json["choices"][0]["text"] == PROMPT + " return 1"
    streamed = chunks(complete(client, echo=True, stream=True))
    assert streamed[0]["choices"][0]["text"] == PROMPT
    assert "".join(c["choices"][0]["text"] for c in streamed) == PROMPT + " return 1"


def test_logprobs_in_the_legacy_shape() -> None:
    client = client_for(" return a + b")
    logprobs = complete(client, logprobs=2).json["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [" return", " a", " +", " b"]
    assert logprobs["token_logprobs"] == [-0.5] * 4
    assert [list(top) for top in logprobs["top_logprobs"]] == [[t, "<alt1>"] for t in logprobs["tokens"]]
    # character offsets from the start of the prompt
    assert logprobs["text_offset"] == [len(PROMPT), len(PROMPT) + 7, len(PROMPT) + 9,
                                       len(PROMPT) + 11]
    assert complete(client, logprobs=0).json["choices"][0]["logprobs"]["top_logprobs"] == [{}] * 4
    streamed = chunks(complete(client, logprobs=2, stream=True))
    merged: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                    "text_offset": []}
    for chunk in streamed:
        for key, values in (chunk["choices"][0]["logprobs"] or {}).items():
            merged[key] += values
    assert merged == logprobs


def test_a_stream_has_one_id_text_deltas_one_finish_and_usage_when_asked() -> None:
    client = client_for(" return a + b")
    data = chunks(complete(client, stream=True, stream_options={"include_usage": True}))
    assert len({c["id"] for c in data}) == 1 and data[0]["id"].startswith("cmpl-")
    assert {c["object"] for c in data} == {"text_completion"}
    finishing = [c for c in data if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1 and finishing[0] is data[-2]
    assert data[-1]["choices"] == [] and data[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in data[:-1])
    text = "".join(c["choices"][0]["text"] for c in data[:-1])
    assert text == complete(client).json["choices"][0]["text"]
    plain = chunks(complete(client, stream=True))
    assert all("usage" not in c and c["choices"] for c in plain)


def test_metadata_and_no_op_values_change_nothing() -> None:
    client = client_for(" return a + b")
    plain = complete(client).json["choices"]
    assert complete(client, user="u-1", suffix=None, best_of=1, n=1, echo=False, logprobs=None,
                    presence_penalty=0, some_future_field={"x": 1}).json["choices"] == plain
    assert complete(client, suffix="").json["choices"] == plain


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"prompt": [1, 2, 3]}, "invalid_value", "prompt"),
    ({"prompt": [[1, 2]]}, "invalid_value", "prompt"),
    ({"prompt": ["a", "b"]}, "invalid_value", "prompt"),
    ({"prompt": []}, "invalid_value", "prompt"),
    ({"prompt": ""}, "invalid_value", "prompt"),
    ({"prompt": None}, "invalid_type", "prompt"),
    ({"suffix": "}\n"}, "unsupported_parameter", "suffix"),
    ({"echo": True, "logprobs": 1}, "invalid_value", "echo"),
    ({"logprobs": 6}, "invalid_value", "logprobs"),
    ({"logprobs": True}, "invalid_type", "logprobs"),
    ({"best_of": 2}, "invalid_value", "best_of"),
    ({"n": 2}, "invalid_value", "n"),
    ({"max_tokens": 0}, "invalid_value", "max_tokens"),
    ({"temperature": 3}, "invalid_value", "temperature"),
    ({"stream_options": {"include_usage": True}}, "invalid_value", "stream_options"),
    ({"logit_bias": {"99999": 1}}, "invalid_value", "logit_bias"),
    ({"seed": 2**63}, "invalid_value", "seed"),
])
def test_what_cannot_be_honoured_is_400_naming_it(body: dict[str, Any], code: str,
                                                  param: str) -> None:
    assert_error(complete(client_for("x"), **body), code, param)


def test_the_prompt_and_the_model_are_required() -> None:
    client = client_for("x")
    result = client.simulate_post("/v1/completions", json={"model": "smollm"})
    assert_error(result, "missing_required_parameter", "prompt")
    result = client.simulate_post("/v1/completions", json={"prompt": "x"})
    assert_error(result, "missing_required_parameter", "model")


def test_a_prompt_beyond_the_context_names_prompt() -> None:
    result = complete(client_for("x"), prompt="word " * 9000, max_tokens=16)
    assert result.status_code == 400, result.text
    assert (result.json["error"]["code"], result.json["error"]["param"]) == (
        "context_length_exceeded", "prompt")
