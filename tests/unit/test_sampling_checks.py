"""The sampler's bounds (check_sampling): every token id and count against the model, every number
against its documented range, and JSON schemas no finite value satisfies."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_server.domain.conversation import ResponseFormat, SamplingParams
from mlx_server.domain.errors import InvalidRequest
from mlx_server.domain.sampling_checks import STOP_CHARS, check_sampling

VOCAB = 49152  # SmolLM2's


def refused(params: SamplingParams, vocab: int | None = VOCAB) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check_sampling(params, vocab)
    assert caught.value.code == "invalid_value"
    return caught.value


@pytest.mark.parametrize("token", [VOCAB, VOCAB + 1, 100257, 999_999_999, -1, -(2**63)])
def test_a_logit_bias_key_outside_the_vocabulary_is_refused_with_the_range(token: int) -> None:
    error = refused(SamplingParams(logit_bias={token: -100}))
    assert error.param == "logit_bias" and f"0 to {VOCAB - 1}" in error.message


def test_a_stop_sequence_longer_than_the_bound_is_refused() -> None:
    check_sampling(SamplingParams(stop=("x" * STOP_CHARS, "\n")), VOCAB)
    error = refused(SamplingParams(stop=("\n", "x" * (STOP_CHARS + 1))))
    assert error.param == "stop" and str(STOP_CHARS) in error.message


def test_logit_bias_keys_at_the_edges_of_the_vocabulary_pass() -> None:
    check_sampling(SamplingParams(logit_bias={0: -100, VOCAB - 1: 100}), VOCAB)


@pytest.mark.parametrize("bias", [100.5, -101, float("nan"), float("inf")])
def test_a_logit_bias_value_outside_minus_100_to_100_is_refused(bias: float) -> None:
    error = refused(SamplingParams(logit_bias={5: bias}))
    assert error.param == "logit_bias" and "-100 to 100" in error.message


@pytest.mark.parametrize("top_k", [VOCAB, VOCAB + 1, 10**30, -1])
def test_top_k_must_be_smaller_than_the_vocabulary(top_k: int) -> None:
    error = refused(SamplingParams(top_k=top_k))
    assert error.param == "top_k" and f"0 (no limit) to {VOCAB - 1}" in error.message


def test_top_k_below_the_vocabulary_passes() -> None:
    check_sampling(SamplingParams(top_k=VOCAB - 1), VOCAB)
    check_sampling(SamplingParams(top_k=0), VOCAB)


@pytest.mark.parametrize(("count", "vocab"), [(21, VOCAB), (-1, VOCAB), (10**20, VOCAB), (9, 8)])
def test_top_logprobs_lies_in_0_to_20_and_within_the_vocabulary(count: int, vocab: int) -> None:
    assert refused(SamplingParams(logprobs=True, top_logprobs=count), vocab).param == "top_logprobs"


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**40])
def test_a_seed_must_fit_in_64_bits(seed: int) -> None:
    error = refused(SamplingParams(seed=seed))
    assert error.param == "seed" and str(2**63 - 1) in error.message


@pytest.mark.parametrize(("name", "value"), [
    ("temperature", -0.1), ("temperature", 2.5), ("top_p", 1.5), ("top_p", -0.5),
    ("min_p", 1.01), ("min_p", float("nan")), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("repetition_penalty", 11.0), ("presence_penalty", 2.5),
    ("frequency_penalty", -3.0), ("max_tokens", 0), ("max_tokens", -5),
])
def test_numbers_outside_their_documented_range_are_refused(name: str, value: float) -> None:
    error = refused(attrs.evolve(SamplingParams(), **{name: value}), vocab=None)
    assert error.param == name


def test_the_model_independent_ranges_are_checked_without_a_vocabulary() -> None:
    check_sampling(SamplingParams(logit_bias={10**8: 1}, top_k=10**8), None)  # a model decides
    assert refused(SamplingParams(logit_bias={-1: 1}), None).param == "logit_bias"


UNSATISFIABLE: list[Any] = [
    {"$ref": "#"},
    {"$defs": {"node": {"$ref": "#/$defs/node"}}, "$ref": "#/$defs/node"},
    {"definitions": {"a": {"$ref": "#/definitions/b"}, "b": {"$ref": "#/definitions/a"}},
     "$ref": "#/definitions/a"},
    {"$defs": {"n": {"allOf": [{"$ref": "#/$defs/n"}]}}, "$ref": "#/$defs/n"},
    {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]},
    {"type": "array", "items": {"$ref": "#"}, "minItems": 1},
    {"type": "array", "prefixItems": [{"$ref": "#"}], "minItems": 1},
    {"anyOf": [{"$ref": "#"}, {"$ref": "#/anyOf/0"}]},
    {"type": "object", "properties": {"a": False}, "required": ["a"]},
    {"$defs": {"x~y": {"$ref": "#/$defs/x~0y"}}, "$ref": "#/$defs/x~0y"},
]


@pytest.mark.parametrize("schema", UNSATISFIABLE)
def test_a_schema_no_finite_value_satisfies_is_refused(schema: Any) -> None:
    error = refused(SamplingParams(response_format=ResponseFormat(schema)))
    assert error.param == "response_format" and "recursion" in error.message


SATISFIABLE: list[Any] = [
    {"$defs": {"node": {"type": "object", "properties": {
        "value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["value"]}}, "$ref": "#/$defs/node"},
    {"type": "object", "properties": {"child": {"$ref": "#"}}},  # optional: {} ends it
    {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
    {"properties": {"c": {"$ref": "#"}}, "required": ["c"]},  # no type: 1 satisfies it
    {"type": ["object", "null"], "properties": {"c": {"$ref": "#"}}, "required": ["c"]},
    {"$ref": "#/$defs/missing"},  # left to the grammar engine, which names the missing pointer
    {"$ref": "http://example.com/schema.json"},
]


@pytest.mark.parametrize("schema", SATISFIABLE)
def test_recursion_with_a_way_out_passes(schema: Any) -> None:
    check_sampling(SamplingParams(response_format=ResponseFormat(schema)), VOCAB)


def test_a_deep_schema_is_checked_without_exhausting_the_stack() -> None:
    schema: dict[str, Any] = {"$ref": "#"}
    for _ in range(20_000):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    assert refused(SamplingParams(response_format=ResponseFormat(schema))).param == "response_format"


@given(token=st.integers(), top_k=st.integers(), top_logprobs=st.integers(), seed=st.integers(),
       vocab=st.integers(min_value=1, max_value=300_000))
def test_any_integers_pass_only_within_bounds(token: int, top_k: int, top_logprobs: int,
                                              seed: int, vocab: int) -> None:
    params = SamplingParams(logit_bias={token: 1.0}, top_k=top_k, logprobs=True,
                            top_logprobs=top_logprobs, seed=seed)
    try:
        check_sampling(params, vocab)
    except InvalidRequest as error:
        assert error.param in {"logit_bias", "top_k", "top_logprobs", "seed"}
    else:
        assert 0 <= token < vocab and 0 <= top_k < vocab and 0 <= top_logprobs <= min(20, vocab)
        assert -(2**63) <= seed < 2**63


@pytest.mark.parametrize("value", [1e-320, 5e-324, 1e-39])
def test_a_repetition_penalty_float32_turns_into_zero_is_refused(value: float) -> None:
    """`repetition_penalty: 1e-320` passed "above 0" and divided by a float32 zero."""
    error = refused(SamplingParams(repetition_penalty=value))
    assert error.param == "repetition_penalty" and "32-bit" in error.message
    check_sampling(SamplingParams(repetition_penalty=1e-30), VOCAB)
