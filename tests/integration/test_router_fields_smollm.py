"""The request fields sglang-router adds (README "Fleet") honoured on real MLX (SmolLM2):
`ignore_eos`, `no_stop_trim`, `continue_final_message` (and Anthropic's prefill, the same rule),
`top_k: -1`; the router's whole set of no-op values changes nothing."""

from __future__ import annotations

from typing import Any

import falcon.testing
import pytest

pytestmark = pytest.mark.slow
PARIS = [{"role": "user", "content": "What is the capital of France?"}]
# every field sglang-router 0.3.2 adds to a chat request, at the values it sends
ROUTER_CHAT_FIELDS = {"logprobs": False, "no_stop_trim": False, "ignore_eos": False,
                      "continue_final_message": False, "skip_special_tokens": True,
                      "separate_reasoning": True, "stream_reasoning": True,
                      "return_hidden_states": False}


@pytest.fixture(scope="module")
def client(smollm_client: falcon.testing.TestClient) -> falcon.testing.TestClient:
    return smollm_client


def chat(client: falcon.testing.TestClient, messages: Any = PARIS, **body: Any) -> dict[str, Any]:
    result = client.simulate_post("/v1/chat/completions",
                                  json={"model": "smollm", "messages": messages, "temperature": 0,
                                        **body})
    assert result.status_code == 200, result.text
    return dict(result.json)


def text(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


def test_the_routers_no_op_values_change_nothing(client: falcon.testing.TestClient) -> None:
    plain = chat(client, max_tokens=12)
    routed = chat(client, max_tokens=12, **ROUTER_CHAT_FIELDS)
    assert text(routed) == text(plain) and routed["usage"] == {**plain["usage"], **{
        "prompt_tokens_details": routed["usage"]["prompt_tokens_details"]}}


def test_ignore_eos_generates_past_the_end_token(client: falcon.testing.TestClient) -> None:
    ended = chat(client, max_tokens=64)
    assert ended["choices"][0]["finish_reason"] == "stop"
    produced = ended["usage"]["completion_tokens"]
    assert produced < 40  # the model ends its short answer itself
    more = chat(client, max_tokens=produced + 6, ignore_eos=True)
    assert more["choices"][0]["finish_reason"] == "length"
    assert more["usage"]["completion_tokens"] == produced + 6
    assert text(more).startswith(text(ended))  # the same answer, then on past its end token
    assert "<|im_end|>" not in text(more)  # the ignored end token adds no text


def test_no_stop_trim_keeps_the_stop_sequence(client: falcon.testing.TestClient) -> None:
    trimmed = chat(client, stop=[" Paris"], max_tokens=12)
    kept = chat(client, stop=[" Paris"], max_tokens=12, no_stop_trim=True)
    assert text(trimmed) == "The capital of France is"
    assert text(kept) == "The capital of France is Paris"
    assert kept["choices"][0]["finish_reason"] == "stop"


def test_continue_final_message_continues_the_answer_greedily(
        client: falcon.testing.TestClient) -> None:
    whole = text(chat(client, max_tokens=12))
    assert whole.startswith("The capital of France is")
    started = [*PARIS, {"role": "assistant", "content": "The capital of France is"}]
    continued = chat(client, started, max_tokens=8, continue_final_message=True)
    assert "The capital of France is" + text(continued) == whole[:len("The capital of France is")
                                                                  + len(text(continued))]
    assert text(continued).startswith(" Paris")
    earlier_turn = chat(client, started, max_tokens=8)  # without it: an earlier turn, answered anew
    assert earlier_turn["usage"]["prompt_tokens"] > continued["usage"]["prompt_tokens"]


def test_anthropic_prefill_continues_the_final_assistant_message(
        client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/messages", json={
        "model": "smollm", "max_tokens": 8, "temperature": 0,
        "messages": [*PARIS, {"role": "assistant", "content": "The capital of France is"}]})
    assert result.status_code == 200, result.text
    chat_continued = text(chat(client, [*PARIS, {"role": "assistant",
                                                 "content": "The capital of France is"}],
                               max_tokens=8, continue_final_message=True))
    assert result.json["content"][0]["text"] == chat_continued


def test_responses_take_the_routers_sampling_values(client: falcon.testing.TestClient) -> None:
    """What sglang-router sends on /v1/responses: honoured (top_k -1 is no limit)."""
    body = {"model": "smollm", "input": "What is the capital of France?", "max_output_tokens": 8,
            "temperature": 0.0}
    plain = client.simulate_post("/v1/responses", json=body)
    routed = client.simulate_post("/v1/responses", json={
        **body, "top_p": 1.0, "priority": 0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0})
    assert plain.status_code == routed.status_code == 200, routed.text
    assert routed.json["output"][0]["content"][0]["text"] == plain.json["output"][0]["content"][0]["text"]
