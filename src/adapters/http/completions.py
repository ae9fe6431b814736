"""The legacy completions API (`POST /v1/completions`), translated onto the chat use case.

The prompt is raw text (ChatRequest.prompt): the domain hands it to the engine as it is, with no
chat template, through the same pipeline as a chat (sampling checks, stops, the context budget,
queueing, cancellation, metrics). This module only reads the wire format and writes OpenAI's
`text_completion` objects, whole or streamed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import cattrs
import falcon
import falcon.asgi

from ...domain.chat import ChatService
from ...domain.completion import Completion, StreamEnd, StreamEvent, StreamStart, TextDelta, TokenLogprob
from ...domain.conversation import ChatRequest, SamplingParams
from ...domain.errors import InvalidRequest
from . import sse
from .codec import top_k_limit, usage_dto
from .dto import StreamOptionsDTO, make_converter
from .json_body import read_json
from .resources import answer
from .validation import COMPLETION_UNSUPPORTED_PARAMETERS, RequestValidator

DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for this API
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@attrs.frozen
class CompletionRequestDTO:
    model: str
    prompt: Any  # a string or a list of one string: checked before structuring
    stream: bool | None = None
    stream_options: StreamOptionsDTO | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    echo: bool | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    user: str | None = None
    ignore_eos: bool | None = None  # SGLang's; sglang-router sends them
    no_stop_trim: bool | None = None


class CompletionCodec:
    """JSON body -> ChatRequest with a raw prompt; Completion -> `text_completion` JSON."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.converter = make_converter()
        self._validator = RequestValidator(spec, "CreateCompletionRequest",
                                           unsupported=COMPLETION_UNSUPPORTED_PARAMETERS)

    def request(self, body: object) -> ChatRequest:
        if isinstance(body, dict):
            _check_prompt(body.get("prompt"))
            if body.get("echo") is True and body.get("logprobs") is not None:
                raise InvalidRequest(
                    "'echo' together with 'logprobs' is not supported: the prompt's own log "
                    "probabilities are not computed. Send one of them.", param="echo",
                    code="invalid_value")
        self._validator.validate(body)
        try:
            dto = self.converter.structure(body, CompletionRequestDTO)
        except cattrs.BaseValidationError as exc:
            raise InvalidRequest("; ".join(cattrs.transform_error(exc))) from exc
        return _to_request(dto)

    def completion(self, completion: Completion, prompt: str) -> dict[str, Any]:
        usage: dict[str, Any] = self.converter.unstructure(usage_dto(completion.usage))
        logprobs = (None if completion.logprobs is None
                    else legacy_logprobs(completion.logprobs, len(prompt))[0])
        return {"id": completion_id(completion.id), "object": "text_completion",
                "created": completion.created,
                "model": completion.model, "system_fingerprint": "mlx-server",
                "choices": [{"text": completion.text or "", "index": 0, "logprobs": logprobs,
                             "finish_reason": completion.finish_reason.value}],
                "usage": usage}


def completion_id(chat_id: str) -> str:
    """This API's id spelling (`cmpl-...`) of the use case's completion id."""
    return "cmpl-" + chat_id.removeprefix("chatcmpl-")


def legacy_logprobs(logprobs: Sequence[TokenLogprob], offset: int) -> tuple[dict[str, Any], int]:
    """OpenAI's legacy `logprobs` object for `logprobs` tokens whose first starts at character
    `offset` (counted from the start of the prompt), and the offset after the last."""
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": [lp.token for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{top.token: top.logprob for top in lp.top} for lp in logprobs],
            "text_offset": offsets}, offset


def _check_prompt(prompt: object) -> None:
    """One prompt of text: token arrays and batches are refused here, naming `prompt` (the
    schema refuses them too; this says why)."""
    if not isinstance(prompt, list) or (len(prompt) == 1 and isinstance(prompt[0], str)):
        return
    if prompt and all(isinstance(item, str) for item in prompt):
        raise InvalidRequest(f"'prompt' holds {len(prompt)} prompts; this server completes one "
                             "prompt per request. Send them one at a time.", param="prompt",
                             code="invalid_value")
    if prompt:
        raise InvalidRequest("'prompt' must be a string (or a list of one string): arrays of "
                             "token ids are not supported, since ids depend on the model's "
                             "tokenizer. Send the text.", param="prompt", code="invalid_value")


def _to_request(dto: CompletionRequestDTO) -> ChatRequest:
    prompt = dto.prompt if isinstance(dto.prompt, str) else dto.prompt[0]
    stop = (dto.stop,) if isinstance(dto.stop, str) else tuple(dto.stop or ())
    sampling = SamplingParams(
        temperature=dto.temperature, top_p=dto.top_p, top_k=top_k_limit(dto.top_k), min_p=dto.min_p,
        seed=dto.seed, max_tokens=dto.max_tokens if dto.max_tokens is not None else DEFAULT_MAX_TOKENS,
        stop=stop, repetition_penalty=dto.repetition_penalty,
        ignore_eos=bool(dto.ignore_eos), include_stop=bool(dto.no_stop_trim),
        presence_penalty=dto.presence_penalty or None,
        frequency_penalty=dto.frequency_penalty or None,
        logit_bias={int(token): bias for token, bias in (dto.logit_bias or {}).items()},
        logprobs=dto.logprobs is not None, top_logprobs=dto.logprobs or 0)
    return ChatRequest(model=dto.model, messages=(), sampling=sampling, stream=bool(dto.stream),
                       include_usage=bool(dto.stream_options and dto.stream_options.include_usage),
                       prompt=prompt, echo=bool(dto.echo))


class CompletionChunkWriter:
    """Streamed `text_completion` objects: one per text delta, one with the finish reason, the
    usage chunk when asked for. Nothing goes out at the start (there is no role to announce)."""

    def __init__(self, start: StreamStart, include_usage: bool, prompt: str) -> None:
        self._head = ('data: {"id":' + _dumps(completion_id(start.id))
                      + ',"object":"text_completion","created":' + str(start.created)
                      + ',"model":' + _dumps(start.model)
                      + ',"system_fingerprint":"mlx-server","choices":')
        self._tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self._include_usage = include_usage
        self._offset = len(prompt)  # text_offset counts from the start of the prompt

    def choice(self, text: str, finish_reason: str | None = None, logprobs: str = "null") -> bytes:
        reason = "null" if finish_reason is None else f'"{finish_reason}"'
        return (self._head + '[{"text":' + _dumps(text) + ',"index":0,"logprobs":' + logprobs
                + ',"finish_reason":' + reason + "}]" + self._tail).encode()

    def first(self) -> bytes:
        return b""

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            logprobs = "null"
            if event.logprobs:
                body, self._offset = legacy_logprobs(event.logprobs, self._offset)
                logprobs = _dumps(body)
            return self.choice(event.text, logprobs=logprobs)
        if isinstance(event, StreamEnd):
            chunks = self.choice("", event.finish_reason.value)
            return chunks + (sse.usage_chunk(self._head, event) if self._include_usage else b"")
        return b""  # no tool calls on this API


class CompletionsResource:
    def __init__(self, service: ChatService, codec: CompletionCodec, max_body_bytes: int,
                 body_timeout: float) -> None:
        self._service, self._codec = service, codec
        self._max_body, self._body_timeout = max_body_bytes, body_timeout

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = await read_json(req, self._max_body, self._body_timeout, self._codec.request)
        prompt = request.prompt or ""
        await answer(req, resp, self._service, request,
                     lambda completion: self._codec.completion(completion, prompt),
                     lambda events: sse.render(events, request.include_usage, lambda start, usage:
                                               CompletionChunkWriter(start, usage, prompt)))
