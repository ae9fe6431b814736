"""The official openai SDK's legacy `client.completions.create` against a real server process on
the fake engine (which answers `You said: <prompt>`), streamed and not."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import sdk_client

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    with sdk_client(["--engine", "fake", "--model", "smollm"]) as sdk:
        yield sdk


def test_a_completion_and_its_stream_agree(client: openai.OpenAI) -> None:
    done = client.completions.create(model="smollm", prompt=PROMPT, max_tokens=8)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    choice = done.choices[0]
    assert (choice.text, choice.finish_reason, choice.logprobs) == (
        f"You said: {PROMPT}", "stop", None)
    assert done.usage is not None and done.usage.prompt_tokens == 3  # the raw text, no template

    stream = client.completions.create(model="smollm", prompt=[PROMPT], max_tokens=8, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == done.usage


def test_stop_max_tokens_echo_and_logprobs(client: openai.OpenAI) -> None:
    cut = client.completions.create(model="smollm", prompt=PROMPT, max_tokens=2)
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == ("You said:", "length")
    stopped = client.completions.create(model="smollm", prompt=PROMPT, stop=[" add"])
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("You said: def", "stop")
    echoed = client.completions.create(model="smollm", prompt=PROMPT, echo=True, max_tokens=2)
    assert echoed.choices[0].text == PROMPT + "You said:"
    scored = client.completions.create(model="smollm", prompt=PROMPT, logprobs=1, max_tokens=2)
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == ["You", " said:"]
    assert logprobs.text_offset == [len(PROMPT), len(PROMPT) + 3]


def test_unsupported_parameters_are_sdk_errors_naming_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as suffix:
        client.completions.create(model="smollm", prompt=PROMPT, suffix="\n")
    assert (suffix.value.code, suffix.value.param) == ("unsupported_parameter", "suffix")
    with pytest.raises(openai.BadRequestError) as batch:
        client.completions.create(model="smollm", prompt=["a", "b"])
    assert batch.value.param == "prompt"
