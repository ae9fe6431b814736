"""The client side of ``python -m bench``: the prompts, one streamed chat completion through the
``openai`` SDK (TTFT, decode tokens/s, usage), and /health latency polled during a stream."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx

from .harness import Server

if TYPE_CHECKING:
    from openai import Stream
    from openai.types.chat import ChatCompletionChunk

STORY = "Write a long story about a robot who learns to paint."
SHORT = "What is the capital of France? Answer in one sentence."
FILLER = ("The history of computing spans centuries, from mechanical calculators and punched "
          "cards to transistors, integrated circuits and the networked machines of today. ")
QUESTIONS = ["Summarize the text above in one sentence.", "Name one machine mentioned above.",
             "What came after punched cards?", "Give the text a title.", "Is the text about cooking?",
             "What is the main topic of the text?"]
HEALTH_SAMPLES = 3000

Messages = list[dict[str, Any]]
Generation = dict[str, Any]  # ttft_s, decode_tps, generated, prompt_tokens, cached_tokens, text


def sysmsg(nonce: str) -> dict[str, str]:
    # A unique system message first: no prefix cache (ours, the peer's) can reuse an earlier run's
    # prompt beyond the template's first few tokens, so TTFT rows measure a cold prefill on every side.
    return {"role": "system", "content": f"Session {nonce}. You are a helpful assistant."}


def fresh(user: str) -> Messages:
    """A new conversation: a unique system message, then ``user``."""
    return [sysmsg(uuid.uuid4().hex[:12]), {"role": "user", "content": user}]


def long_document(model_dir: Path, tokens: int) -> str:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = ""
    while len(tokenizer.encode(text).ids) < tokens:
        text += FILLER
    return text


def _open(server: Server, messages: Messages, max_tokens: int, usage: bool) -> Stream[ChatCompletionChunk]:
    create = server.client.chat.completions.create
    if usage:
        return create(model=server.model, messages=cast(Any, messages), temperature=0, max_tokens=max_tokens,
                      stream=True, stream_options={"include_usage": True})
    return create(model=server.model, messages=cast(Any, messages), temperature=0, max_tokens=max_tokens,
                  stream=True)


def stream_once(server: Server, messages: Messages, max_tokens: int) -> Generation:
    start = time.perf_counter()
    first = last = 0.0
    chunks = 0
    text = ""
    usage = None
    for chunk in _open(server, messages, max_tokens, usage=True):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            chunks += 1
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    generated = usage.completion_tokens if usage else chunks
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    return {"ttft_s": first - start if first else None,
            # tokens after the first one over the time they took: mlx_vlm's generation_tps definition
            "decode_tps": (generated - 1) / (last - first) if generated > 1 and last > first else None,
            "generated": generated, "prompt_tokens": usage.prompt_tokens if usage else None,
            "cached_tokens": getattr(details, "cached_tokens", None) if details else None, "text": text}


def chat_turn(server: Server, messages: Messages, content: str, max_tokens: int) -> Generation:
    """Append a user turn, stream the reply, append it (or "OK." when empty) as the assistant turn."""
    messages.append({"role": "user", "content": content})
    result = stream_once(server, messages, max_tokens)
    messages.append({"role": "assistant", "content": result["text"] or "OK."})
    return result


class _HealthPoller:
    """GET /health every 20 ms on its own thread, latencies kept (at most HEALTH_SAMPLES)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.latencies: list[float] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.done.is_set() and len(self.latencies) < HEALTH_SAMPLES:
                start = time.perf_counter()
                client.get(f"{self.base}/health")
                self.latencies.append(time.perf_counter() - start)
                time.sleep(0.02)

    def p99(self) -> float | None:
        if len(self.latencies) < 5:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def health_p99(server: Server, messages: Messages, tokens: int) -> float | None:
    """p99 of /health latency while ``server`` streams a reply to ``messages`` (polled during decode)."""
    poller = _HealthPoller(server.base)
    started = False
    for chunk in _open(server, messages, tokens, usage=False):
        if not started and chunk.choices and chunk.choices[0].delta.content:
            poller.thread.start()  # polling during decode: the generation is streaming
            started = True
    poller.done.set()
    if started:
        poller.thread.join(timeout=15)
    return poller.p99()
