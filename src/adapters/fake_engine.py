"""A deterministic inference engine for offline tests and demos: no weights, no MLX.

It renders prompts in a plain ChatML-like text (a raw completion prompt as it is), tokenises by
words, and streams either the raw replies it was given (cycling through them, so real tool-call
parsing can run on them) or an echo of the last user message (of the raw prompt). A reply is a
whole assistant message, as a model would have written it: when the server forces the assistant
turn to start with a prefix (a tool-call opener) and the reply starts with it too, the fake
continues from the reply after that prefix, as a model continuing its forced start would.

Reasoning, for a family with reasoning markers (Qwen3, Qwen3-VL), as its template is told by
`thinking`: "none" (an Instruct template: never thinks, no switch), "hybrid" (Qwen3's: reads
`enable_thinking`; off renders an empty closed block) or "forced" (a Thinking template: its
generation prompt opens the block). A reply scripted as `<think>plan</think>answer` is continued
after the opening marker when the prompt opened it, and without its block when thinking is off.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import attrs

from ..domain.completion import FinishReason, GenerationStep, TokenLogprob, TopLogprob
from ..domain.conversation import Message, SamplingParams, ToolSpec
from ..domain.errors import EngineFailure, EngineUnavailable
from ..domain.families import profile_named
from ..domain.models import ModelRef
from ..domain.ports import PreparedPrompt, PromptInput, RowId, RowProgress, StepReport

_TOKEN = re.compile(r"\s*\S+|\s+")
VOCAB_SIZE = 32000  # token ids 0..31999, as a Llama-2-sized tokenizer


def tokenize(text: str) -> list[str]:
    """Word-level tokens that join back into exactly `text`."""
    return _TOKEN.findall(text)


def render(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
    lines = []
    if tools:
        lines.append("<|tools|>\n" + "\n".join(tool.name for tool in tools))
    for message in messages:
        images = " <image>" * len(message.images)
        calls = "".join(f"\n<call {c.name} {c.arguments}>" for c in message.tool_calls)
        lines.append(f"<|{message.role.value}|>{images}\n{message.text}{calls}")
    lines.append("<|assistant|>\n")
    return "\n".join(lines)


def load_replies(path: Path) -> tuple[str, ...]:
    """Read a JSON list of raw model outputs."""
    replies = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(replies, list) or not all(isinstance(item, str) for item in replies):
        raise ValueError(f"{path}: expected a JSON list of strings")
    return tuple(replies)


class FakeEngine:
    """Implements the InferenceEngine port. Every model 'loads' instantly."""

    def __init__(self, replies: Sequence[str] = (), delay: float = 0.0,
                 vocab_size: int = VOCAB_SIZE, prefill_chunk: int = 64,
                 thinking: Literal["none", "hybrid", "forced"] = "none") -> None:
        self._replies = itertools.cycle(replies) if replies else None
        self._thinking = thinking
        self._delay = delay  # seconds per step: a slow stream, for tests of cancellation
        self._vocab_size = vocab_size
        self._prefill_chunk = prefill_chunk
        self._loaded: ModelRef | None = None
        self._rows: dict[RowId, _Row] = {}
        self._next_row = 0
        self.loads: list[str] = []  # every model id loaded, in order: lets tests see swaps
        # what the steps did, for tests: rows admitted, each step's decoding rows and prompt
        # tokens prefilled, rows released (with keep)
        self.admitted: list[RowId] = []
        self.steps: list[tuple[RowId, ...]] = []
        self.prefills: list[int] = []
        self.released: list[tuple[RowId, bool]] = []

    @property
    def loaded(self) -> ModelRef | None:
        return self._loaded

    @property
    def vocab_size(self) -> int | None:
        """A fixed vocabulary, so that requests naming token ids meet the same bounds as on a
        real model."""
        return self._vocab_size if self._loaded is not None else None

    def load(self, model: ModelRef) -> None:
        self.unload()
        self._loaded = model
        self.loads.append(model.id)

    def unload(self) -> None:
        self._loaded = None

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        if prompt.raw is not None:
            return PreparedPrompt(token_count=len(tokenize(prompt.raw)),
                                  payload=_Prompt(prompt.raw))
        template = render(prompt.messages, prompt.tools)
        markers = profile_named(self._loaded.family).thinking if self._loaded else None
        opened, closed = "", False
        if markers is not None and self._thinking == "forced":
            opened = markers[0]
            template += opened + "\n"
        elif markers is not None and self._thinking == "hybrid" and prompt.thinking is False:
            closed = True
            template += f"{markers[0]}\n\n{markers[1]}\n\n"
        text = template + prompt.assistant_prefix
        last_user = next((m.text for m in reversed(prompt.messages) if m.role == "user"), "")
        return PreparedPrompt(token_count=len(tokenize(text)),
                              payload=_Prompt(last_user, prompt.assistant_prefix, markers, opened,
                                              closed),
                              tail=template[-64:], thinking_switch=self._thinking == "hybrid")

    @property
    def prefill_chunk(self) -> int:
        return self._prefill_chunk

    def admit(self, prompt: PreparedPrompt, params: SamplingParams) -> RowId:
        payload = prompt.payload if isinstance(prompt.payload, _Prompt) else _Prompt(str(prompt.payload))
        tokens = self.reply_tokens(payload, params)
        limit = params.max_tokens if params.max_tokens is not None else len(tokens)
        ends = limit >= len(tokens) and not params.ignore_eos  # the reply's own end comes first
        if params.ignore_eos:  # past its end: the reply again, up to the limit
            tokens = (tokens * (limit // len(tokens) + 1))[:limit]
        self._next_row += 1
        self._rows[self._next_row] = _Row(
            tokens[:max(limit, 1)], finish=FinishReason.STOP if ends else FinishReason.LENGTH,
            to_prefill=max(prompt.token_count - prompt.cached_tokens, 0),
            logprobs=params.top_logprobs if params.logprobs else None,
            faults=_faults(payload.said))
        self.admitted.append(self._next_row)
        return self._next_row

    def reply_tokens(self, payload: _Prompt, params: SamplingParams) -> list[str]:
        """The tokens a row will emit: the next scripted reply (or the echo), continued after
        what the prompt already holds. Tests override it to script exact chunks."""
        reply = next(self._replies) if self._replies else f"You said: {payload.said}"
        if payload.markers and reply.lstrip().startswith(payload.markers[0]):
            if payload.opened:  # the opening marker is in the prompt already
                reply = reply.lstrip()[len(payload.markers[0]):]
            elif payload.closed:  # told not to think: the model writes no block
                reply = reply.partition(payload.markers[1])[2].lstrip()
        if payload.forced and reply.startswith(payload.forced):
            reply = reply[len(payload.forced):]  # the forced start is in the prompt already
        if params.seed is not None and params.temperature:  # a sampled reply: its own draw
            reply += f" [seed {params.seed} t {params.temperature:g}]"
        return tokenize(reply) or [""]

    def step(self, prefill: Mapping[RowId, int]) -> StepReport:
        started = time.monotonic()
        if self._delay:
            time.sleep(self._delay)
        progress: list[RowProgress] = []
        decoding = tuple(row for row, state in self._rows.items()
                         if state.emitted and not state.ended)
        self.steps.append(decoding)
        prefilled_total = 0
        for row, grant in prefill.items():
            state = self._rows.get(row)
            if state is None or state.emitted:
                continue
            if state.faults.get("fail-engine") == 1:  # the step of its first token fails
                self._rows.clear()
                raise EngineUnavailable("Inference failed for every running request "
                                        "(injected engine failure). Retry shortly.")
            if "fail-prefill" in state.faults:
                del self._rows[row]
                progress.append(RowProgress(row, error=EngineFailure(
                    "Inference failed: RuntimeError: injected prefill failure")))
                continue
            done = min(max(grant, 0), state.to_prefill)
            state.to_prefill -= done
            prefilled_total += done
            step = self._emit(state) if state.to_prefill == 0 else None
            progress.append(RowProgress(row, prefilled=done, step=step))
        self.prefills.append(prefilled_total)
        for row in decoding:
            state = self._rows[row]
            if state.faults.get("fail-engine") == state.emitted + 1:
                self._rows.clear()
                raise EngineUnavailable("Inference failed for every running request "
                                        "(injected engine failure). Retry shortly.")
            if state.faults.get("fail-row") == state.emitted + 1:
                del self._rows[row]
                progress.append(RowProgress(row, error=EngineFailure(
                    "Inference failed: RuntimeError: injected row failure")))
                continue
            progress.append(RowProgress(row, step=self._emit(state)))
        return StepReport(tuple(progress), decoded=len(decoding), prefill_tokens=prefilled_total,
                          seconds=time.monotonic() - started)

    def release(self, row: RowId, *, keep: bool) -> None:
        if self._rows.pop(row, None) is not None:
            self.released.append((row, keep))

    @staticmethod
    def _emit(state: _Row) -> GenerationStep:
        token = state.tokens[state.emitted]
        state.emitted += 1
        logprob = _logprob(token, state.logprobs) if state.logprobs is not None else None
        finish = state.finish if state.emitted == len(state.tokens) else None
        state.ended = finish is not None
        return GenerationStep(token, state.emitted, finish, logprob)


_FAULT = re.compile(r"\[\[(fail-row|fail-engine|fail-prefill)(?:@(\d+))?\]\]")


def _faults(text: str) -> dict[str, int]:
    """Fault markers a test writes in its message: `[[fail-row@3]]` fails that row at its third
    token, `[[fail-engine@2]]` fails the whole step there, `[[fail-prefill]]` its prefill."""
    return {kind: int(at or 1) for kind, at in _FAULT.findall(text)}


@attrs.define
class _Row:
    tokens: list[str]
    finish: FinishReason
    to_prefill: int
    logprobs: int | None  # top_logprobs when the request asked for logprobs
    faults: dict[str, int]
    emitted: int = 0
    ended: bool = False


def _logprob(token: str, top: int, logprob: float = -0.5) -> TokenLogprob:
    """A fixed log probability, the token itself the most likely of `top` alternatives."""
    alternatives = [TopLogprob(token, logprob, tuple(token.encode()))]
    alternatives += [TopLogprob(f"<alt{k}>", logprob - k, tuple(f"<alt{k}>".encode()))
                     for k in range(1, top)]
    return TokenLogprob(token, logprob, tuple(token.encode()), tuple(alternatives[:top]))


@attrs.frozen
class _Prompt:
    said: str  # the last user message (the raw prompt): what the default reply repeats
    forced: str = ""  # the assistant turn's forced start, already part of the prompt
    markers: tuple[str, str] | None = None  # the family's reasoning markers
    opened: str = ""  # the marker the prompt opened the reasoning with
    closed: bool = False  # the prompt closed an empty reasoning block: thinking off
