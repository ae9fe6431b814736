"""schemathesis against openapi.yaml: the in-process app on the fake engine, every default check.

Hooks keep generated requests *valid or invalid exactly as generated* while steering valid ones to
the interesting paths: the model is pinned to a served one (so 200s and streams happen, not only
404s), completion lengths are kept small, a named tool_choice names a tool that was sent. The same
steering serves Anthropic's /v1/messages bodies (image sources, `{"type": "tool", "name"}`); their
error envelope is declared on those paths in openapi.yaml, so the default checks read it there.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import events, from_schema

from mlx_server.adapters.fake_engine import VOCAB_SIZE
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings

SPEC = Path(__file__).parents[2] / "openapi.yaml"
MIN_CASES = int(os.environ.get("CONTRACT_MIN_CASES", "1000"))
SERVED_MODEL = "mlx-community/gemma-3-4b-it-4bit"
SERVED_SCHEMES = ("data:", "http://", "https://")  # the server's own rule (adapters/images/loader.py)
TINY_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4"
            "z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def steer_images(messages: Any) -> None:
    """An image URL of a shape the server takes (a data: URI, an http(s) URL) gets bytes it can
    decode: no schema can say which bytes are an image or which hosts answer. Any other string is
    left as generated, so a contract looser than the server's rule shows up as a failure."""
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            image = part.get("image_url") if isinstance(part, dict) else None
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str) and url.strip().lower().startswith(SERVED_SCHEMES):
                image["url"] = TINY_PNG


def steer_anthropic_images(messages: Any) -> None:
    """Anthropic's image blocks, as `steer_images`: a base64 source's string data becomes a
    decodable PNG, a url source with an http(s) URL string becomes that PNG as a base64 source
    (a schema cannot say which bytes decode or which hosts answer); anything else stays as
    generated."""
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            source = block.get("source") if isinstance(block, dict) else None
            if not isinstance(source, dict):
                continue
            if source.get("type") == "base64" and isinstance(source.get("data"), str):
                source["data"] = TINY_PNG.split(",", 1)[1]
            url = source.get("url")
            if (source.get("type") == "url" and isinstance(url, str)
                    and url.strip().lower().startswith(SERVED_SCHEMES[1:])):
                source.clear()
                source.update(type="base64", media_type="image/png",
                              data=TINY_PNG.split(",", 1)[1])


def steer_response_items(items: Any) -> None:
    """Responses' `input_image` parts, as `steer_images`: an image URL of a shape the server
    takes gets bytes it can decode; anything else stays as generated."""
    for item in items if isinstance(items, list) else []:
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else []:
            url = part.get("image_url") if isinstance(part, dict) else None
            if isinstance(url, str) and url.strip().lower().startswith(SERVED_SCHEMES):
                part["image_url"] = TINY_PNG


def steer_response_tools(body: dict[str, Any]) -> None:
    """Responses' tools: a namespace member's name made unique among every tool's (no schema can
    say that names differ across nested lists; the server refuses an ambiguous one), and a named
    tool_choice naming the first function sent."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list):
        return
    functions = [tool for tool in tools if isinstance(tool, dict) and tool.get("type") == "function"]
    names = {tool["name"] for tool in functions if isinstance(tool.get("name"), str)}
    for tool in tools:
        members = tool.get("tools") if isinstance(tool, dict) and tool.get("type") == "namespace" \
            else None
        for member in members if isinstance(members, list) else []:
            name = member.get("name") if isinstance(member, dict) else None
            if isinstance(name, str):
                while name in names:
                    name = (name + "_")[-64:] if len(name) < 64 else name[1:] + "_"
                member["name"] = name
                names.add(name)
                functions.append(member)
    if isinstance(choice, dict) and isinstance(choice.get("name"), str) and functions \
            and isinstance(functions[0].get("name"), str) and "function" not in choice:
        choice["name"] = functions[0]["name"]


def steer_token_ids(body: dict[str, Any]) -> None:
    """Token ids and `top_k` must lie inside the served model's vocabulary, which no schema can
    state (it is the model's): integers the schema allows are mapped into the fake engine's."""
    top_k = body.get("top_k")  # JSON Schema counts 7.0 as an integer
    if isinstance(top_k, int | float) and not isinstance(top_k, bool) and top_k >= VOCAB_SIZE:
        body["top_k"] = int(top_k) % VOCAB_SIZE
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        body["logit_bias"] = {(str(int(key) % VOCAB_SIZE) if key.isdigit() else key): value
                              for key, value in bias.items()}


def steer_thinking(body: dict[str, Any]) -> None:
    """Whether a model can think is the model's (no schema states it): the served gemma has no
    reasoning, so switches are turned to their off value, which it accepts as a no-op."""
    if body.get("reasoning_effort") is not None:
        body["reasoning_effort"] = "none"
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("enable_thinking") is not None:
        kwargs["enable_thinking"] = False
    reasoning = body.get("reasoning")  # the Responses API's
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        reasoning["effort"] = "none"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        body["thinking"] = {"type": "disabled"}


def steer_continuation(body: dict[str, Any]) -> None:
    """A final assistant message is continued (chat's `continue_final_message: true`; always on
    Anthropic's API), which needs it to be an assistant turn of text (no schema states an array's
    last item) and cannot go with a reply forced to start otherwise (a JSON format, a required or
    named tool call: the server refuses the pair, naming it). Such bodies become the equivalent
    without the continuation."""
    messages = body.get("messages")
    turns = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")] \
        if isinstance(messages, list) else []  # Anthropic's system messages join the system prompt
    last = turns[-1] if turns else None
    assistant = isinstance(last, dict) and last.get("role") == "assistant"
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else choice
    forced = bool(body.get("tools")) and kind in ("required", "function", "any", "tool")
    formats = body.get("response_format"), (body.get("output_config") or {}).get("format") \
        if isinstance(body.get("output_config"), dict) else None
    forced = forced or any(isinstance(f, dict) and f.get("type") in ("json_object", "json_schema")
                           for f in formats)
    if body.get("continue_final_message") is True and (
            not assistant or forced or (isinstance(last, dict) and last.get("tool_calls"))):
        body["continue_final_message"] = False
    elif "continue_final_message" not in body and assistant and forced \
            and isinstance(messages, list):  # Anthropic's prefill (harmless on a chat body)
        messages.append({"role": "user", "content": "Go on."})


def steer_body(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    steer_images(body.get("messages"))
    steer_anthropic_images(body.get("messages"))
    steer_response_items(body.get("input"))
    if isinstance(body.get("model"), str) and body["model"]:
        body["model"] = "gemma"
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)  # JSON Schema counts 7.0 as an integer
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 64:
            body[key] = 64
    steer_token_ids(body)
    steer_response_tools(body)
    steer_thinking(body)
    steer_continuation(body)
    tools, choice = body.get("tools"), body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(tools, list) and tools:
        first = tools[0] if isinstance(tools[0], dict) else {}
        name = first.get("function", {}).get("name") if isinstance(first.get("function"), dict) else None
        if isinstance(name, str) and isinstance(choice.get("function"), dict):
            choice["function"]["name"] = name
        # Anthropic's {"type": "tool", "name": ...} names a tool that was sent, the same way
        if isinstance(first.get("name"), str) and isinstance(choice.get("name"), str) \
                and first.get("type") != "namespace":
            choice["name"] = first["name"]
    return body


def make_schema() -> Any:
    schema = schemathesis.openapi.from_path(str(SPEC))
    # images per request are a deployment's limit (--max-images), counted across messages, which
    # no schema states: this server takes as many as the body can carry
    schema.app = build(Settings(engine="fake", max_body_mb=1.0, max_images=100_000))
    schema.config.update(base_url="http://localhost")
    schema.config.generation.update(max_examples=int(os.environ.get("CONTRACT_MAX_EXAMPLES", "200")))
    schema.config.max_stream_events = 1000  # validate whole streams, [DONE] and usage chunk included
    schema.config.seed = int(os.environ.get("CONTRACT_SEED", "20261125"))
    return schema


_alternate = itertools.cycle([True, False])


@schemathesis.hook  # global: before_call has no per-schema scope; this suite has one schema
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    """Runs on every phase's cases (examples and coverage too, unlike map_body)."""
    case.body = steer_body(case.body)
    parameters = case.path_parameters
    if isinstance(parameters, dict) and isinstance(parameters.get("model"), str) and next(_alternate):
        parameters["model"] = SERVED_MODEL


def describe(recorder: Any, case_id: str, check: Any) -> str:
    failure = check.failure_info.failure
    interaction = recorder.interactions.get(case_id)
    sent = getattr(getattr(interaction, "request", None), "body", None)
    got = getattr(getattr(interaction, "response", None), "content", b"")
    return (f"{check.name}: {failure.title} {(failure.message or '')[:300]}\n"
            f"    sent: {str(sent)[:int(os.environ.get('CONTRACT_SHOW', '500'))]}\n"
            f"    got: {got[:300]!r}")


@pytest.mark.slow
def test_every_generated_case_passes_every_default_check() -> None:
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    for event in from_schema(make_schema()).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, checks in event.recorder.checks.items():
                failures += [describe(event.recorder, case_id, c)
                             for c in checks if c.failure_info is not None]
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    statuses[(str(event.label), interaction.response.status_code)] += 1
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"error: {getattr(event, 'info', None) or event}")
    total = sum(statuses.values())
    print(f"\nschemathesis: {total} cases, {len(failures)} failures")
    for (label, status), count in sorted(statuses.items()):
        print(f"  {label} -> {status}: {count}")
    assert failures == [], "\n".join(failures)
    assert total >= MIN_CASES
    streamed_ok = statuses[("POST /v1/chat/completions", 200)]
    assert streamed_ok > 50 and statuses[("GET /v1/models/{model}", 200)] > 0
    assert statuses[("POST /v1/completions", 200)] > 50
    assert statuses[("POST /v1/messages", 200)] > 50
    assert statuses[("POST /v1/messages/count_tokens", 200)] > 0
    assert statuses[("POST /v1/responses", 200)] > 50
