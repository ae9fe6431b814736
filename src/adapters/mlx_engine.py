"""The real inference engine: mlx_vlm's loader, the model's own chat template, stream_generate.

Every method runs on the single generation thread (the domain's GenerationWorker), which owns MLX.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Generator, Mapping
from typing import Any

from ..domain.completion import FinishReason, GenerationStep
from ..domain.conversation import Message, Role, SamplingParams, TextPart, ToolSpec
from ..domain.errors import InvalidRequest, ModelUnavailable
from ..domain.models import ModelRef
from ..domain.ports import PreparedPrompt, PromptInput
from .dequantize import dequantize_for_cpu

log = logging.getLogger(__name__)
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
_TENSORS = ("input_ids", "pixel_values", "attention_mask")


class MlxEngine:
    """Implements the InferenceEngine port with mlx_vlm, one model in memory at a time."""

    def __init__(self, cpu_weights: str = "auto") -> None:
        self._cpu_weights = cpu_weights
        self.weights = "none loaded"  # how the loaded model's weights are held (for /health)
        self._ref: ModelRef | None = None
        self._model: Any = None
        self._processor: Any = None

    @property
    def loaded(self) -> ModelRef | None:
        return self._ref

    def load(self, model: ModelRef) -> None:
        from mlx_vlm.utils import load

        self.unload()
        log.info("loading %s from %s", model.id, model.source)
        try:
            self._model, self._processor = load(model.source)
            self.weights = dequantize_for_cpu(self._model, self._cpu_weights)
        except Exception as exc:  # corrupt weights, unknown architecture, out of memory, ...
            self.unload()
            raise ModelUnavailable(
                f"The model {model.id!r} could not be loaded ({type(exc).__name__}: {exc}). "
                "Check its files, or choose another model.", param="model") from exc
        self._ref = model
        log.info("%s loaded: %s", model.id, self.weights)

    def unload(self) -> None:
        """Drop every reference to the model, collect, and hand MLX's buffer cache back."""
        import mlx.core as mx

        self._ref = self._model = self._processor = None
        gc.collect()
        mx.clear_cache()

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        from mlx_vlm.prompt_utils import apply_chat_template
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        model, processor = self._require()
        if prompt.images and not (self._ref and self._ref.vision):
            raise InvalidRequest("This model has no vision: it cannot take images.",
                                 param="messages", code="unsupported_value")
        kwargs: dict[str, Any] = {"tools": [_tool_json(t) for t in prompt.tools]} if prompt.tools else {}
        try:
            text: str = apply_chat_template(processor, model.config,
                                       [_template_message(m) for m in prompt.messages],
                                       num_images=len(prompt.images), **kwargs)  # type: ignore[assignment]
        except Exception as exc:  # jinja TemplateError: e.g. roles that must alternate
            raise InvalidRequest(f"The model's chat template rejected the conversation: {exc}",
                                 param="messages") from exc
        images = [image.image for image in prompt.images] or None
        # NOTE: Gemma's template writes <bos> itself; adding it again doubles it
        bos = getattr(getattr(processor, "tokenizer", processor), "bos_token", None)
        add_special = should_add_special_tokens(model.config.model_type, processor) and not (
            isinstance(bos, str) and bos and text.startswith(bos))
        inputs = prepare_inputs(  # type: ignore[no-untyped-call]
            processor, images=images, prompts=text + prompt.assistant_prefix,
            image_token_index=getattr(model.config, "image_token_index", None),
            add_special_tokens=add_special)
        return PreparedPrompt(token_count=int(inputs["input_ids"].shape[1]), payload=inputs)

    def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> Generator[GenerationStep, None, None]:
        from mlx_vlm.generate import stream_generate

        model, processor = self._require()
        inputs: Mapping[str, Any] = prompt.payload  # type: ignore[assignment]
        extra = {key: value for key, value in inputs.items() if key not in _TENSORS}
        results = stream_generate(
            model, processor, "", input_ids=inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"), mask=inputs.get("attention_mask"),
            **_sampling(params), **extra)
        counted = 0
        try:
            for result in results:
                # the detokenizer's final flush repeats the last token: it is not a new one
                token = result.token if result.generation_tokens > counted else None
                counted = result.generation_tokens
                yield GenerationStep(result.text, token, _FINISH.get(result.finish_reason or ""))
        finally:
            results.close()

    def _require(self) -> tuple[Any, Any]:
        if self._model is None:
            raise ModelUnavailable("No model is loaded.")
        return self._model, self._processor


def _sampling(params: SamplingParams) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_tokens": params.max_tokens}
    if params.temperature is not None:
        kwargs["temperature"] = params.temperature
    if params.top_p is not None:
        kwargs["top_p"] = params.top_p
    if params.seed is not None:
        kwargs["seed"] = params.seed
    return kwargs


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
    return entry


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": dict(tool.parameters)}}
