"""Continuous batching on mlx_vlm's model calls and cache classes (pinned to mlx-vlm 0.7.10).

Every mlx_vlm private name the engine uses goes through this module. The design
(docs/batching.md §2): a joining row prefills alone (B=1) into a cache of its own, in chunks of
at most the tokens a step grants it, exactly as mlx_vlm's `generate_step` prefills; its last
prompt token's logits give its first token; its cache then joins the batch cache (`merge`,
`extend`) and it decodes with every other decoding row, one batched forward per step. Each row
keeps its own logits processors (applied on its slice), its own sampling parameters and its own
random stream (a key per (seed, position)), so a row's output does not depend on its neighbours.
A finished row's KV state is taken out of the batch (`extract`) and the batch cache filtered.
"""

from __future__ import annotations

import gc
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ...domain.completion import FinishReason, GenerationStep, TokenLogprob, TopLogprob
from ...domain.conversation import SamplingParams
from ...domain.errors import DomainError, EngineFailure, EngineUnavailable
from ...domain.ports import PreparedPrompt, RowId, RowProgress, StepReport
from .kv_store import CachePlan, KvPrefixStore, restore

log = logging.getLogger(__name__)
_TENSORS = ("input_ids", "pixel_values", "attention_mask")
CACHE_EVAL_INTERVAL = 50  # decode steps between cache evaluations + clear_cache (mlx_vlm's)
PENALTY_CONTEXT = 20  # mlx_vlm's default repetition/presence/frequency context size


# ---- mlx_vlm's pieces, by name -------------------------------------------------------------

def generation_stream() -> Any:
    from mlx_vlm.generate.common import generation_stream as stream

    return stream


def position_seed(seed: int, position: int) -> int:
    """The 32-bit seed of a row's draw at generated position `position` (mlx_vlm's scheme, row 0:
    what its seeded single-request sampler uses)."""
    from mlx_vlm.generate.ar import _position_seed

    return int(_position_seed(seed, 0, position))


def sampling_defaults(config: Any, params: SamplingParams) -> tuple[float, float, int]:
    """Temperature, top_p, top_k: the request's, else the checkpoint's, else mlx_vlm's."""
    from mlx_vlm.generate.common import resolve_sampling_defaults
    from mlx_vlm.sample_utils import clamp_temperature

    temperature, top_p, top_k = resolve_sampling_defaults(
        config, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    return float(clamp_temperature(float(temperature))), float(top_p), int(top_k or 0)


def logits_processors(params: SamplingParams) -> list[Any]:
    """logit_bias and the penalties, as mlx_vlm's generate_step builds them."""
    from mlx_vlm.sample_utils import make_logits_processors

    return list(make_logits_processors(
        dict(params.logit_bias) if params.logit_bias else None,
        params.repetition_penalty, PENALTY_CONTEXT, params.presence_penalty, PENALTY_CONTEXT,
        params.frequency_penalty, PENALTY_CONTEXT))


def fresh_cache(model: Any) -> list[Any]:
    from mlx_vlm.models.cache import make_prompt_cache

    return list(make_prompt_cache(model.language_model))


def chunked_prefill(model: Any, ids: Any, embeds: Any, cache: Any, kwargs: Mapping[str, Any]) -> bool:
    from mlx_vlm.generate.common import _chunked_prefill_enabled

    return bool(_chunked_prefill_enabled(model, input_ids=ids, inputs_embeds=embeds,
                                         prompt_cache=cache, prefill_kwargs=dict(kwargs)))


def prime_cached_prefix(model: Any, ids: Any, mask: Any, kwargs: dict[str, Any]) -> bool:
    """Qwen-style mRoPE positions of the whole prompt into `kwargs` before only its uncached
    suffix is prefilled (what mlx_vlm's single path does on a prefix-cache hit)."""
    from mlx_vlm.generate.dispatch import _prime_cached_prefix_rope_state

    return bool(_prime_cached_prefix_rope_state(model, ids, mask, kwargs))


def detokenizer(processor: Any) -> Any:
    from mlx_vlm.tokenizer_utils import make_streaming_detokenizer

    return make_streaming_detokenizer(processor)  # type: ignore[no-untyped-call]


def eos_ids(tokenizer: Any) -> frozenset[int]:
    criteria = getattr(tokenizer, "stopping_criteria", None)
    ids = list(getattr(criteria, "eos_token_ids", None) or ())
    if not ids and (eos := getattr(tokenizer, "eos_token_id", None)) is not None:
        ids = [eos] if isinstance(eos, int) else list(eos)
    return frozenset(int(i) for i in ids)


def batched(cache: Sequence[Any]) -> list[Any]:
    """A single-row cache as batch caches (KVCache -> BatchKVCache, RotatingKVCache ->
    BatchRotatingKVCache), one per layer."""
    return [type(layer).merge([layer]) for layer in cache]


def extend(batch: list[Any], other: Sequence[Any]) -> None:
    for layer, joining in zip(batch, other, strict=True):
        layer.extend(joining)


def extract(batch: Sequence[Any], index: int) -> list[Any]:
    import mlx.core as mx

    rows = [layer.extract(index) for layer in batch]
    mx.eval([(c.keys, c.values) for c in rows])
    return rows


def keep_rows(batch: Sequence[Any], indices: Sequence[int]) -> None:
    import mlx.core as mx

    kept = mx.array(list(indices), dtype=mx.int32)
    for layer in batch:
        layer.filter(kept)


# ---- sampling -----------------------------------------------------------------------------

def sample(logprobs: Any, temperature: Sequence[float], top_k: Sequence[int],
           top_p: Sequence[float], min_p: Sequence[float], seeds: Sequence[int],
           positions: Sequence[int]) -> Any:
    """One token per row of `logprobs` (B, V), each row by its own parameters and its own key
    (seed, position): the same row draws the same token whatever its neighbours. Order: top_k,
    min_p, temperature, top_p (float32), then a categorical draw; temperature 0: argmax."""
    import mlx.core as mx
    import numpy as np

    greedy = mx.argmax(logprobs, axis=-1)
    if all(t == 0 for t in temperature):
        return greedy
    vocab = logprobs.shape[-1]
    x = logprobs.astype(mx.float32)
    neg = mx.array(-float("inf"), dtype=mx.float32)
    if any(0 < k < vocab for k in top_k):
        kth = mx.array([[k - 1 if 0 < k < vocab else vocab - 1] for k in top_k], dtype=mx.int32)
        threshold = mx.take_along_axis(-mx.sort(-x, axis=-1), kth, axis=-1)
        x = mx.where(x < threshold, neg, x)
    if any(p > 0 for p in min_p):
        floor = mx.array([[np.log(p) if p > 0 else -np.inf] for p in min_p], dtype=mx.float32)
        x = mx.where(x < mx.max(x, axis=-1, keepdims=True) + floor, neg, x)
    scale = mx.array([[1.0 / t if t > 0 else 1.0] for t in temperature], dtype=mx.float32)
    x = x * scale
    x = x - mx.logsumexp(x, axis=-1, keepdims=True)
    if any(0 < p < 1 for p in top_p):
        nucleus = mx.array([[p if 0 < p < 1 else 1.0] for p in top_p], dtype=mx.float32)
        apply = mx.array([[0 < p < 1] for p in top_p])
        ordered = mx.sort(x, axis=-1)
        mass_above = mx.cumsum(mx.exp(ordered), axis=-1, reverse=True, inclusive=False)
        total = mass_above[..., :1] + mx.exp(ordered[..., :1])
        dropped = (mass_above >= nucleus * total).sum(axis=-1, keepdims=True)
        threshold = mx.take_along_axis(ordered, dropped, axis=-1)
        x = mx.where(apply & (x < threshold), neg, x)
    keys = mx.array(np.array([[0, position_seed(s, p)] for s, p in zip(seeds, positions, strict=True)],
                             dtype=np.uint32))
    drawn = mx.vmap(lambda row, key: mx.random.categorical(row, key=key))(x, keys)
    return mx.where(mx.array([t == 0 for t in temperature]), greedy, drawn.astype(greedy.dtype))


# ---- rows ---------------------------------------------------------------------------------

@attrs.define(eq=False)
class Row:
    """One request's sequence: its prompt, its sampling state and, while it prefills (or once it
    left the batch), its own cache."""

    id: RowId
    prompt: PreparedPrompt
    plan: CachePlan | None
    processors: list[Any]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    max_tokens: int | None
    logprobs: bool
    top_logprobs: int
    eos: frozenset[int]
    detok: Any
    ignore_eos: bool = False  # an EOS token does not end the row (and adds no text)
    cache: list[Any] | None = None  # own cache: prefilling, or taken out of the batch
    ids: Any = None  # prompt ids still to prefill (1, n)
    embeds: Any = None  # their embeddings (1, n, d)
    kwargs: dict[str, Any] = attrs.Factory(dict)  # the model's prompt kwargs (positions, ...)
    chunked: bool = True
    rope_delta: Any = None  # Qwen mRoPE: (1, 1)
    reused: int = 0  # prompt tokens restored from the prefix cache
    context: list[int] = attrs.Factory(list)  # the processors' token context
    generated: list[int] = attrs.Factory(list)
    prefilled: int = 0  # prompt tokens through the model in whole chunks
    decoding: bool = False  # in the batch
    finished: bool = False

    @property
    def started(self) -> bool:
        return self.ids is not None


class Batch:
    """The decoding rows, their batch cache, their last tokens (device) and mRoPE deltas; and the
    step in flight, if one was launched (`pending`): the tokens and log-probabilities of a forward
    already run on `tokens` (the cache holds their position) but not yet read to the host."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.cache: list[Any] | None = None
        self.tokens: Any = None  # (B,) int
        self.deltas: Any = None  # (B, 1) or None
        self.pending: tuple[Any, Any] | None = None  # (B,) tokens, (B, V) logprobs
        self.steps = 0

    def join(self, row: Row, token: Any) -> None:
        import mlx.core as mx

        assert row.cache is not None
        # a joiner is one step behind a step in flight: none is launched while one may join
        assert self.pending is None, "a row joined while a step was in flight"
        cache = batched(row.cache)
        if self.cache is None:
            self.cache, self.tokens = cache, token
        else:
            extend(self.cache, cache)
            self.tokens = mx.concatenate([self.tokens, token])
        if row.rope_delta is not None:
            delta = row.rope_delta.reshape(1, 1)
            self.deltas = delta if self.deltas is None else mx.concatenate([self.deltas, delta])
        self.rows.append(row)
        row.cache, row.decoding = None, True

    def leave(self, indices: Sequence[int], keep: bool = False) -> None:
        """Take these rows out: with `keep`, each gets its KV state back as its own cache. Their
        tokens of a step in flight are discarded with them."""
        import mlx.core as mx

        gone = set(indices)
        if not gone:
            return
        if self.pending is not None:  # as mlx_vlm does: the step in flight done before filtering
            mx.eval([*self.pending, *(c.state for c in self.cache or ())])
        for i in sorted(gone):
            row = self.rows[i]
            row.decoding = False
            if keep and self.cache is not None:
                row.cache = extract(self.cache, i)
        remaining = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in remaining]
        if not remaining:
            self.clear()
            return
        assert self.cache is not None
        keep_rows(self.cache, remaining)
        index = mx.array(remaining, dtype=mx.int32)
        self.tokens = self.tokens[index]
        if self.deltas is not None:
            self.deltas = self.deltas[index]
        if self.pending is not None:
            tokens, logprobs = self.pending
            self.pending = (tokens[index], logprobs[index])

    def clear(self) -> None:
        for row in self.rows:
            row.decoding = False
        self.rows, self.cache, self.tokens, self.deltas = [], None, None, None
        self.pending = None


class Batcher:
    """The admit/step/release machinery for one loaded model (the engine's port, minus loading
    and prompt preparation)."""

    def __init__(self, model: Any, processor: Any, prefix: KvPrefixStore | None,
                 chunk: int) -> None:
        self.model, self.processor, self.prefix, self.chunk = model, processor, prefix, chunk
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.eos = eos_ids(self.tokenizer)
        language = model.language_model
        self.mrope = hasattr(language, "_rope_deltas") or hasattr(language, "_position_ids")
        self.rows: dict[RowId, Row] = {}
        self.batch = Batch()
        self._next_id = 0

    # -- admit ------------------------------------------------------------------------------

    def admit(self, prompt: PreparedPrompt, params: SamplingParams, processors: list[Any]) -> RowId:
        temperature, top_p, top_k = sampling_defaults(getattr(self.model, "config", None), params)
        plan = getattr(prompt.payload, "plan", None)
        self._next_id += 1
        row = Row(
            id=self._next_id, prompt=prompt, plan=plan,
            processors=[*logits_processors(params), *processors],
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=float(params.min_p or 0.0),
            seed=int(params.seed) if params.seed is not None else secrets.randbits(32),
            max_tokens=params.max_tokens, logprobs=params.logprobs,
            top_logprobs=params.top_logprobs if params.logprobs else 0,
            eos=self.eos, detok=detokenizer(self.processor), ignore_eos=params.ignore_eos)
        self.rows[row.id] = row
        return row.id

    # -- step -------------------------------------------------------------------------------

    def step(self, prefill: Mapping[RowId, int]) -> StepReport:
        import mlx.core as mx

        started = time.perf_counter()
        progress: dict[RowId, RowProgress] = {}
        decoded = 0
        joining = [row for row_id, budget in prefill.items()
                   if (row := self._prefilling(row_id, budget)) is not None]
        if self.batch.rows:
            decoded = self._decode(progress, pipeline=not joining)
        prefilled = 0
        for row_id, budget in prefill.items():
            row = self._prefilling(row_id, budget)
            if row is None:
                continue
            try:
                with mx.stream(generation_stream()):
                    done, step = self._prefill(row, budget)
            except Exception as exc:  # that row's own fault: its restore, embedding, prefill
                self._fail(row, exc, progress)
                continue
            prefilled += done
            progress[row.id] = RowProgress(row.id, prefilled=done, step=step)
        return StepReport(tuple(progress.values()), decoded=decoded, prefill_tokens=prefilled,
                          seconds=time.perf_counter() - started)

    def _prefilling(self, row_id: RowId, budget: int) -> Row | None:
        """The row `row_id` if this step prefills it (and it may join the batch)."""
        row = self.rows.get(row_id)
        if row is None or row.decoding or row.finished or budget <= 0 or row.generated:
            return None
        return row

    def _fail(self, row: Row, exc: BaseException, progress: dict[RowId, RowProgress]) -> None:
        if isinstance(exc, DomainError):
            error: DomainError = exc
        else:
            log.exception("row %d failed", row.id, exc_info=exc)
            error = EngineFailure(f"Generation failed ({type(exc).__name__}: {exc}).")
        self.release(row.id, keep=False)
        progress[row.id] = RowProgress(row.id, error=error)

    def _start(self, row: Row) -> None:
        """The row's cache (fresh, or restored from the prefix cache per its plan) and its
        prompt's embeddings (its own images through the vision tower, once)."""
        model = self.model
        inputs: Mapping[str, Any] = row.prompt.payload  # type: ignore[assignment]
        ids, pixels, mask = inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask")
        kwargs = {key: value for key, value in inputs.items() if key not in _TENSORS}
        plan, cache = row.plan, None
        if plan is not None and plan.hit is not None and self.prefix is not None:
            try:
                restored = restore(plan.hit.entry.handle, plan.reused)  # type: ignore[arg-type]
                primed = dict(kwargs)
                if 0 < plan.reused < ids.shape[1] and prime_cached_prefix(model, ids, mask, primed):
                    cache, kwargs, row.reused = restored, primed, plan.reused
                    ids, pixels = ids[:, plan.reused:], None
                    kwargs.pop("pixel_values_videos", None)
                    kwargs.pop("cached_image_features", None)
            except Exception:  # the prefix cache is an optimisation: prefill it all instead
                log.exception("prefix cache: restoring %d tokens failed", plan.reused)
            if cache is None:
                log.warning("prefix cache: did not reuse the planned %d tokens", plan.reused)
        if cache is None:
            cache = fresh_cache(model)
        explicit = {key: kwargs[key] for key in ("position_ids", "rope_deltas")
                    if kwargs.get(key) is not None}
        embedded = model.get_input_embeddings(ids, pixels, mask=mask, **kwargs)
        kwargs.update({key: value for key, value in embedded.to_dict().items()
                       if key != "inputs_embeds" and value is not None})
        kwargs.update(explicit)
        row.cache, row.ids, row.embeds, row.kwargs = cache, ids, embedded.inputs_embeds, kwargs
        row.chunked = chunked_prefill(model, ids, row.embeds, cache, kwargs)
        if self.mrope and kwargs.get("rope_deltas") is not None:
            row.rope_delta = kwargs["rope_deltas"]

    def _prefill(self, row: Row, budget: int) -> tuple[int, GenerationStep | None]:
        """Up to `budget` prompt tokens of `row` through the model, alone (B=1); the last one
        gives its first token, and the row joins the batch."""
        import mlx.core as mx

        if not row.started:
            self._start(row)
        lm, cache = self.model.language_model, row.cache
        assert cache is not None
        done = 0
        if not row.chunked:  # the model prefills in one pass only
            budget = max(budget, row.ids.shape[1])
        while row.chunked and row.ids.shape[1] > 1 and done < budget:
            n = min(self.chunk, row.ids.shape[1] - 1, budget - done)
            lm(inputs=row.ids[:, :n], inputs_embeds=row.embeds[:, :n], cache=cache,
               n_to_process=n, **row.kwargs, logits_to_keep=1)
            mx.eval([c.state for c in cache])
            row.ids, row.embeds = row.ids[:, n:], row.embeds[:, n:]
            done += n
            row.prefilled += n
            mx.clear_cache()
        if done >= budget:
            return done, None
        # the last prompt token (the whole prompt when the model does not chunk): first logits
        last_ids, last_embeds = row.ids, row.embeds
        done += last_ids.shape[1]
        logits = lm(last_ids, inputs_embeds=last_embeds, cache=cache, **row.kwargs,
                    logits_to_keep=1).logits[:, -1, :]
        row.ids = row.ids[:, :0]
        row.embeds = row.kwargs = None  # type: ignore[assignment]
        row.context = [int(t) for t in last_ids.reshape(-1).tolist()] if row.processors else []
        logits = self._process(row, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        token = sample(logprobs, [row.temperature], [row.top_k], [row.top_p], [row.min_p],
                       [row.seed], [0])
        value = int(token.item())
        step = self._emit(row, value, logprobs[0])
        if not row.finished:
            self.batch.join(row, token)
        return done, step

    def _process(self, row: Row, logits: Any) -> Any:
        import mlx.core as mx

        if row.processors:
            context = mx.array(row.context, dtype=mx.int32)
            for processor in row.processors:
                logits = processor(context, logits)
        return logits

    def _decode(self, progress: dict[RowId, RowProgress], pipeline: bool = True) -> int:
        """One step for every decoding row: one batched forward, each row's processors on its
        slice, one sampling call, one host transfer of the tokens. Double-buffered (docs/
        batching.md §2.1.7) while the batch is stable (`pipeline`: no row may join this step) and
        no row has processors (they need this step's tokens on the host): the next step's forward
        and sampling are launched on this step's device tokens before these are read, so the
        host's work (detokenizing, emitting, the server's per-token work after the step) overlaps
        the device's. A row leaving while a step is in flight has its token in it discarded."""
        import mlx.core as mx

        batch = self.batch
        rows = list(batch.rows)
        failed: dict[int, BaseException] = {}
        try:
            with mx.stream(generation_stream()):
                if batch.pending is not None:  # launched by the previous step, for these rows
                    tokens, logprobs = batch.pending
                    batch.pending = None
                else:
                    tokens, logprobs = self._sample(batch, rows, failed)
                    mx.async_eval(tokens, logprobs)  # type: ignore[no-untyped-call]
                batch.tokens = tokens
                batch.steps += 1
                if batch.steps % CACHE_EVAL_INTERVAL == 0 and batch.cache is not None:
                    mx.eval([c.state for c in batch.cache])
                    mx.clear_cache()
                if pipeline and not failed and self._steady(rows):
                    batch.pending = self._sample(batch, rows, failed, ahead=1)
                    mx.async_eval(*batch.pending)  # type: ignore[no-untyped-call]
                values: list[int] = tokens.tolist()  # the step's one host transfer
        except Exception as exc:
            self._collapse(exc)
        leaving: list[int] = []
        for i, row in enumerate(rows):
            if i in failed:
                continue
            try:
                step = self._emit(row, values[i], logprobs[i])
            except Exception as exc:
                failed[i] = exc
                continue
            progress[row.id] = RowProgress(row.id, step=step)
            if row.finished:
                leaving.append(i)
        if leaving:
            batch.leave(leaving, keep=self.prefix is not None)
        for i, fault in failed.items():
            self._fail(rows[i], fault, progress)
        return len(rows) - len(failed)

    @staticmethod
    def _steady(rows: Sequence[Row]) -> bool:
        """Whether the next step may be launched before this one's tokens are read: no row has
        processors, and some row goes on past this step (max_tokens)."""
        if any(row.processors for row in rows):
            return False
        return any(row.max_tokens is None or len(row.generated) + 1 < row.max_tokens
                   for row in rows)

    def _sample(self, batch: Batch, rows: Sequence[Row], failed: dict[int, BaseException],
                ahead: int = 0) -> tuple[Any, Any]:
        """The forward on `batch.tokens` (the cache takes their position), each row's processors
        on its slice (a processor's failure goes to `failed`, its row sampled unprocessed), and
        the sampled tokens with their log-probabilities. `ahead`: tokens sampled but not yet
        emitted (1 when launching the step after the one not yet read), for the rows' keys."""
        import mlx.core as mx

        logits = self._forward(batch)
        if any(row.processors for row in rows):
            parts = []
            for i, row in enumerate(rows):
                part = logits[i:i + 1]
                if row.processors:
                    row.context.append(row.generated[-1])  # this step's input
                    try:
                        part = self._process(row, part)
                    except Exception as exc:  # that row's processor: its failure only
                        failed[i] = exc
                        part = logits[i:i + 1]
                parts.append(part)
            logits = mx.concatenate(parts, axis=0)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        tokens = sample(logprobs, [r.temperature for r in rows], [r.top_k for r in rows],
                        [r.top_p for r in rows], [r.min_p for r in rows],
                        [r.seed for r in rows], [len(r.generated) + ahead for r in rows])
        return tokens, logprobs

    def _forward(self, batch: Batch) -> Any:
        kwargs = {"rope_deltas": batch.deltas} if self.mrope and batch.deltas is not None else {}
        out = self.model.language_model(batch.tokens[:, None], cache=batch.cache,
                                        logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :]

    def _collapse(self, exc: BaseException) -> None:
        """The batched step failed: drop every row and the batch cache, free memory, raise."""
        import mlx.core as mx

        log.error("batched step failed: every row is dropped", exc_info=exc)
        rows = len(self.rows)
        self.rows.clear()
        self.batch.clear()
        gc.collect()
        mx.clear_cache()
        raise EngineUnavailable(
            f"The engine failed while generating ({type(exc).__name__}: {exc}); {rows} "
            "request(s) in flight were dropped. Retry.") from exc

    def _emit(self, row: Row, token: int, logprobs: Any) -> GenerationStep:
        row.generated.append(token)
        finish = None
        eos = token in row.eos
        if eos and not row.ignore_eos:
            finish = FinishReason.STOP
            row.detok.finalize()
            text = row.detok.last_segment
        else:
            if not eos:  # an ignored EOS is a token generated, not text
                row.detok.add_token(token)
            text = row.detok.last_segment
            if row.max_tokens is not None and len(row.generated) >= row.max_tokens:
                finish = FinishReason.LENGTH
                row.detok.finalize()
                text += row.detok.last_segment
        logprob = (token_logprob(self.tokenizer, token, logprobs, row.top_logprobs)
                   if row.logprobs else None)
        row.finished = finish is not None
        return GenerationStep(text, token, finish, logprob)

    # -- release ----------------------------------------------------------------------------

    def release(self, row_id: RowId, *, keep: bool) -> None:
        row = self.rows.pop(row_id, None)
        if row is None:
            return
        if not row.generated and not keep:
            log.info("cancelled during prefill after %d of %d prompt tokens", row.prefilled,
                     row.prompt.token_count - row.prompt.cached_tokens)
        if row.decoding:
            self.batch.leave([self.batch.rows.index(row)], keep=keep)
        cache, row.cache = row.cache, None
        if not (keep and cache and row.generated and row.plan is not None and self.prefix):
            return
        if row.reused != row.plan.reused:  # the plan's entry was not used: its key would lie
            return
        try:
            self.prefix.save(row.plan, cache, row.generated)
        except Exception:  # the prefix cache is an optimisation: log and go on
            log.exception("prefix cache: saving row %d failed", row.id)

    def drop_all(self) -> None:
        self.rows.clear()
        self.batch.clear()


def token_logprob(tokenizer: Any, token: int, logprobs: Any, top: int) -> TokenLogprob:
    """OpenAI's per-token entry from the log-softmax over the vocabulary (one row)."""
    import mlx.core as mx

    values = logprobs.reshape(-1)
    alternatives: tuple[TopLogprob, ...] = ()
    if top:
        best = mx.argpartition(-values, kth=top - 1)[:top]
        ids: list[int] = best.tolist()  # type: ignore[assignment]
        scores: list[float] = values[best].tolist()
        ranked = sorted(zip(ids, scores, strict=True), key=lambda pair: -pair[1])
        alternatives = tuple(TopLogprob(text, lp, raw) for i, lp in ranked
                             for text, raw in [_token_text(tokenizer, i)])
    text, raw = _token_text(tokenizer, token)
    return TokenLogprob(text, float(values[token].item()), raw, alternatives)


def _token_text(tokenizer: Any, token: int) -> tuple[str, tuple[int, ...]]:
    text = str(tokenizer.decode([token]))
    return text, tuple(text.encode("utf-8"))
