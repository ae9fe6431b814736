"""The real inference engine: mlx_vlm's loader, the model's own chat template, and rows of
requests decoding together (the batch machinery: batch.py).

Every method runs on the single generation thread (the domain's GenerationWorker), which owns MLX.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ...domain.conversation import Message, Role, SamplingParams, TextPart, ToolSpec
from ...domain.errors import InvalidRequest, ModelUnavailable
from ...domain.models import ModelRef
from ...domain.ports import PreparedPrompt, PromptInput, RowId, StepReport
from ..host import Host
from ..store.model_files import check_model_dir
from .batch import Batcher
from .dequantize import dequantize_for_cpu
from .kv_store import CachePlan, KvPrefixStore
from .structured import json_logits_processor
from .tool_constraint import tool_call_processor

log = logging.getLogger(__name__)
_TAIL = 64  # characters of the rendered template the domain reads (an open reasoning block)


class MlxEngine:
    """Implements the InferenceEngine port with mlx_vlm, one model in memory at a time."""

    def __init__(self, cpu_weights: str = "auto", prefix_cache: bool = True,
                 prefix_cache_mb: int | None = None, prefill_chunk: int | None = None,
                 warm_batches: tuple[int, ...] | None = None) -> None:
        self._cpu_weights = cpu_weights
        # batch sizes a load warms up (a GPU compiles kernels per shape on first use, minutes
        # on CUDA); None: none on the CPU, 1, 2, 4 and 8 on a GPU
        self._warm_batches = warm_batches
        _steady_heap()
        # tokens per prefill pass: a cancel is seen between passes. None: by device, as measured
        # (bench/prefill_chunk.py, bench/GPU.md; figures in bench/RESULTS.md): on the CPU small
        # passes are also the fastest; on a GPU large ones are, and are still short enough that a
        # cancel is seen promptly
        self._prefill_chunk = prefill_chunk
        # KV prefix cache: on by default; budget None = an eighth of RAM, 256 MiB to 4 GiB
        self.prefix = KvPrefixStore(prefix_cache_mb) if prefix_cache else None
        self.weights = "none loaded"  # how the loaded model's weights are held (for /health)
        self._ref: ModelRef | None = None
        self._model: Any = None
        self._processor: Any = None
        # facts of the loaded model, read once at load: its weights' size, logits width, and the
        # image markers its processor writes (see _logits_width, _placeholders)
        self._weight_size = 0
        self._vocab: int | None = None
        self._markers: tuple[str, ...] = ()
        self._batcher: Batcher | None = None  # the rows of the loaded model

    @property
    def loaded(self) -> ModelRef | None:
        return self._ref

    @property
    def vocab_size(self) -> int | None:
        """The loaded model's logits width (see _logits_width); None with no model loaded."""
        return self._vocab

    def load(self, model: ModelRef) -> None:
        import mlx.core as mx
        from mlx_vlm.utils import load

        needed = self._preflight(model)  # before the release: refused, the old model serves on
        self.unload()
        _check_fits(model, Host().available_memory_bytes(), needed=needed)  # exact, the old model gone
        log.info("loading %s from %s", model.id, model.source)
        try:
            self._model, self._processor = load(model.source)
            self.weights = dequantize_for_cpu(self._model, self._cpu_weights)
            # NOTE: building the model drew a random init for every parameter from MLX's global
            # key, each draw splitting the key lazily; the loaded weights replace those draws
            # unevaluated, so the key stays a chain of every split since start-up, and it grows
            # with each load (by how much: bench/RESULTS.md). Evaluating it collapses the chain.
            mx.eval(mx.random.state)
        except Exception as exc:  # corrupt weights, unknown architecture, out of memory, ...
            self.unload()
            raise ModelUnavailable(
                f"The model {model.id!r} could not be loaded ({type(exc).__name__}: {exc}). "
                "Check its files, or choose another model.", param="model") from exc
        self._ref = model
        self._weight_size, self._vocab = needed, _logits_width(self._model, self._processor)
        self._markers = _placeholders(self._processor)
        log.info("%s loaded: %s", model.id, self.weights)
        self._warm_up()

    def _warm_up(self) -> None:
        """A short greedy generation at each batch size the scheduler will use, so that the first
        requests do not wait while the device compiles its kernels (on CUDA, measured on an H200:
        the first request after a cold start waited 148 s; bench/GPU.md). Part of the load:
        /health says "loading" until it is done. A failure here is logged, never fatal."""
        import mlx.core as mx

        sizes = self._warm_batches
        if sizes is None:
            sizes = (1, 2, 4, 8) if mx.default_device().type == mx.gpu else ()
        if not sizes:
            return
        started = time.monotonic()
        try:
            prompt = self.prepare(PromptInput(
                messages=(Message(Role.USER, (TextPart("Say hello."),)),)))
            prompt = attrs.evolve(prompt, cached_tokens=0,
                                  payload=_Payload(prompt.payload, None))  # type: ignore[arg-type]
            params = SamplingParams(max_tokens=3, temperature=0.0)
            for size in sizes:
                rows = [self.admit(prompt, params) for _ in range(size)]
                pending, grant = set(rows), {row: prompt.token_count for row in rows}
                try:
                    while pending:  # all prefilled in the first step, then decoded together
                        for progress in self.step(grant).rows:
                            if progress.error is not None:
                                raise progress.error
                            if progress.step is not None and progress.step.finish_reason:
                                pending.discard(progress.row)
                        grant = {}
                finally:
                    for row in rows:
                        self.release(row, keep=False)
        except Exception:  # a model that cannot chat (no template) still serves completions
            log.warning("warm-up failed; the first requests compile their own kernels",
                        exc_info=True)
        log.info("warmed up batch sizes %s in %.1f s", sizes, time.monotonic() - started)

    def _preflight(self, model: ModelRef) -> int:
        """Everything about `model` that can be checked while the current model is still loaded:
        its files (check_model_dir) and whether it could fit once the current one is released
        (MemAvailable plus what MLX holds for it: optimistic, the exact check follows the
        release). Returns its weights' size in bytes."""
        import mlx.core as mx

        directory = Path(model.source)
        if not directory.is_dir():
            raise ModelUnavailable(f"The model {model.id!r} is not a local model directory.",
                                   param="model")
        needed = check_model_dir(model.id, directory)
        available = Host().available_memory_bytes()
        if available is not None and self._ref is not None:
            held = mx.get_active_memory() + mx.get_cache_memory()
            available += max(held, self._weight_size)
        _check_fits(model, available, needed=needed)
        return needed

    def unload(self) -> None:
        """Drop every reference to the model, collect, and hand MLX's buffer cache back."""
        import mlx.core as mx

        if self.prefix is not None and self._ref is not None:
            self.prefix.drop_model(self._ref.id)  # KV states of a model gone are useless
        if self._batcher is not None:
            self._batcher.drop_all()
        self._ref = self._model = self._processor = self._vocab = self._batcher = None
        self._weight_size, self._markers = 0, ()
        gc.collect()
        mx.clear_cache()

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        model, processor = self._require()
        _refuse_placeholders(prompt, self._markers)
        bos = getattr(getattr(processor, "tokenizer", processor), "bos_token", None)
        switch = False
        if prompt.raw is not None:  # a legacy completion: the text as it is, no template, so
            # the tokenizer's own special tokens (its BOS) go in unless the text has them
            text = prompt.raw
            add_special = not (isinstance(bos, str) and bos and text.startswith(bos))
        else:
            text = self._template(model, processor, prompt)
            switch = "enable_thinking" in _template_source(processor)
            # NOTE: Gemma's template writes <bos> itself; adding it again doubles it
            add_special = should_add_special_tokens(model.config.model_type, processor) and not (
                isinstance(bos, str) and bos and text.startswith(bos))
        images = [image.image for image in prompt.images] or None
        try:
            inputs = prepare_inputs(  # type: ignore[no-untyped-call]
                processor, images=images, prompts=text + prompt.assistant_prefix,
                image_token_index=getattr(model.config, "image_token_index", None),
                add_special_tokens=add_special)
        except ValueError as exc:  # the processor's own input checks (an image's shape, ...)
            raise InvalidRequest(f"The model's processor refused the input: {exc}",
                                 param="messages",
                                 code="invalid_image" if images else "invalid_value") from exc
        plan = self._cache_plan(inputs, prompt)
        return PreparedPrompt(token_count=int(inputs["input_ids"].shape[1]),
                              payload=_Payload(inputs, plan), cached_tokens=plan.reused if plan else 0,
                              tail=text[-_TAIL:], thinking_switch=switch)

    @staticmethod
    def _template(model: Any, processor: Any, prompt: PromptInput) -> str:
        from mlx_vlm.prompt_utils import apply_chat_template

        kwargs: dict[str, Any] = {"tools": [_tool_json(t) for t in prompt.tools]} if prompt.tools else {}
        if prompt.thinking is not None:  # else mlx_vlm passes enable_thinking false itself
            kwargs["enable_thinking"] = prompt.thinking
        try:
            text: str = apply_chat_template(processor, model.config,
                                       [_template_message(m) for m in prompt.messages],
                                       num_images=len(prompt.images), **kwargs)  # type: ignore[assignment]
        except Exception as exc:  # jinja TemplateError: e.g. roles that must alternate
            raise InvalidRequest(f"The model's chat template rejected the conversation: {exc}",
                                 param="messages") from exc
        return text

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per prefill pass: the configured size, else by device, as measured
        (bench/prefill_chunk.py, bench/GPU.md; figures in bench/RESULTS.md): on the CPU small
        passes are also the fastest; on a GPU large ones are."""
        return self._chunk()

    def admit(self, prompt: PreparedPrompt, params: SamplingParams) -> RowId:
        """The row's state only: its sampling parameters and seed, its logits processors (a JSON
        schema or a tool grammar compiled now: a bad schema is InvalidRequest). No model
        compute: later steps prefill it."""
        batcher = self._rows()
        tokenizer = getattr(self._processor, "tokenizer", self._processor)
        processors: list[Any] = []
        if params.response_format is not None:  # the domain never sends a tool grammar with it
            processors.append(json_logits_processor(tokenizer, params.response_format.schema))
        elif params.tool_grammar is not None and (
                constraint := tool_call_processor(tokenizer, params.tool_grammar)) is not None:
            processors.append(constraint)
        return batcher.admit(prompt, params, processors)

    def step(self, prefill: Mapping[RowId, int]) -> StepReport:
        if self._batcher is None:
            return StepReport(())
        return self._batcher.step(prefill)

    def _rows(self) -> Batcher:
        model, processor = self._require()
        if self._batcher is None or self._batcher.model is not model:
            self._batcher = Batcher(model, processor, self.prefix, self._chunk())
        return self._batcher

    def release(self, row: RowId, *, keep: bool) -> None:
        if self._batcher is not None:
            self._batcher.release(row, keep=keep)

    def _chunk(self) -> int:
        if self._prefill_chunk is None:
            import mlx.core as mx

            self._prefill_chunk = 1024 if mx.default_device().type == mx.gpu else 128
        return self._prefill_chunk

    def _cache_plan(self, inputs: Mapping[str, Any], prompt: PromptInput) -> CachePlan | None:
        if self.prefix is None or self._ref is None:
            return None
        ids = [int(token) for token in inputs["input_ids"][0].tolist()]
        return self.prefix.plan(self._model, self._ref.id, ids, [i.key for i in prompt.images])

    def _require(self) -> tuple[Any, Any]:
        if self._model is None:
            raise ModelUnavailable("No model is loaded.")
        return self._model, self._processor


class _Payload(dict[str, Any]):
    """prepare_inputs' tensors, and the prefix-cache plan made for them."""

    def __init__(self, inputs: Mapping[str, Any], plan: CachePlan | None) -> None:
        super().__init__(inputs)
        self.plan = plan


def _steady_heap(threshold: int = 1 << 20) -> None:
    """glibc only: serve blocks of `threshold` bytes and more with mmap, so that a swapped-out
    model's weights go back to the OS whole. glibc's default threshold rises to the largest block
    freed, after which weights come from the heap and swaps fragment it, and RSS wanders from one
    swap to the next (the soak figures, with and without: bench/RESULTS.md). Blocks below 1 MiB
    (a decode step, a 128-token prefill pass) stay on the heap. MALLOC_MMAP_THRESHOLD_ in the
    environment (the operator's own choice) wins."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return
    mallopt(-3, threshold)  # M_MMAP_THRESHOLD


def _check_fits(model: ModelRef, available: int | None, headroom: float = 0.9, *,
                needed: int | None = None) -> None:
    """Refuse a model whose weight files alone exceed the memory there is, instead of letting the
    load push the machine into swap or the OOM killer. `needed` defaults to the files' size."""
    if needed is None:
        needed = _weight_bytes(Path(model.source))
    if available is not None and needed > headroom * available:
        raise ModelUnavailable(
            f"The model {model.id!r} needs about {needed / 2**30:.1f} GiB for its weights, but only "
            f"{available / 2**30:.1f} GiB of memory is available. Free memory, or choose a smaller "
            "model.", param="model")


def _weight_bytes(directory: Path) -> int:
    """The size of a model directory's *.safetensors files; what cannot be read counts 0."""
    total = 0
    with contextlib.suppress(OSError):
        for path in directory.glob("*.safetensors"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total


def _logits_width(model: Any, processor: Any) -> int:
    """How many logits the model scores per step, read from its weights: the rows of its output
    projection (`lm_head`) and of its input embedding (the same matrix when tied). This, not the
    tokenizer's length, bounds the token ids MLX indexes with (they differ when the embedding is
    padded: Qwen's tokenizer counts 151,665 tokens for 151,936 rows). Where both exist the smaller
    wins: a biased token is sampled from the logits and then embedded. Falls back to the config's
    vocab_size, then to the tokenizer, for architectures that name them otherwise."""
    language = getattr(model, "language_model", model)
    rows = []
    for owner, name in ((language, "lm_head"), (getattr(language, "model", None), "embed_tokens")):
        weight = getattr(getattr(owner, name, None), "weight", None)
        if getattr(weight, "ndim", 0) == 2:
            rows.append(int(weight.shape[0]))  # type: ignore[union-attr]
    if rows:
        return min(rows)
    config = getattr(model, "config", None)
    for section in (getattr(config, "text_config", None), config):
        if isinstance(size := getattr(section, "vocab_size", None), int) and size > 0:
            return size
    return len(getattr(processor, "tokenizer", processor))


def _placeholders(processor: Any) -> tuple[str, ...]:
    """The marker strings a vision processor writes for images and video and then counts or
    expands (`image_token`, `boi_token`, `video_token`, `vision_start_token`, ...)."""
    return tuple(value for name, value in vars(processor).items()
                 if name.endswith("_token") and isinstance(value, str) and value.strip())


def _refuse_placeholders(prompt: PromptInput, placeholders: tuple[str, ...]) -> None:
    """A client's text must not carry the image markers: they tokenize to the very ids the
    processor counts, and Gemma 3 then fails to place the image features (a 500)."""
    sources = [("messages", [message.text, *(f"{call.name} {call.arguments}"
                                             for call in message.tool_calls)])
               for message in prompt.messages]
    if prompt.raw is not None:
        sources.append(("prompt", [prompt.raw]))
    for param, texts in sources:
        for marker in placeholders:
            if any(marker in text for text in texts):
                raise InvalidRequest(
                    f"The {'conversation' if param == 'messages' else 'prompt'} contains "
                    f"{marker!r}, which this model's processor writes for images itself; it "
                    "cannot come from a client. Remove it, or send the image as an image_url "
                    "part of a chat message.", param=param, code="invalid_value")


def _template_message(message: Message) -> dict[str, Any]:
    """OpenAI-shaped, as mlx_vlm's templating expects: image parts keep their place."""
    role = Role.SYSTEM if message.role is Role.DEVELOPER else message.role
    content: Any = message.text
    if message.images:
        content = [{"type": "text", "text": part.text} if isinstance(part, TextPart)
                   else {"type": "image_url", "image_url": {"url": "image"}}
                   for part in message.content]
    entry: dict[str, Any] = {"role": role.value, "content": content}
    if message.tool_calls:
        entry["tool_calls"] = [{"id": call.id, "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments}}
                               for call in message.tool_calls]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    if message.reasoning is not None:  # Qwen3's templates read it (the turns after the last query)
        entry["reasoning_content"] = message.reasoning
    return entry


def _template_source(processor: Any) -> str:
    """The chat template's Jinja source (the processor's, else its tokenizer's); "" if none."""
    for owner in (processor, getattr(processor, "tokenizer", None)):
        template = getattr(owner, "chat_template", None)
        if isinstance(template, str):
            return template
        if isinstance(template, dict):
            return "\n".join(value for value in template.values() if isinstance(value, str))
    return ""


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": dict(tool.parameters)}}
