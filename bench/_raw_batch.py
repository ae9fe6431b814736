"""Raw batched-decode ceiling for ``python -m bench.concurrency``: mlx_vlm's model and batch caches
with no server. Each prompt is prefilled alone (B=1, its own cache, in chunks), the single-row caches
are merged into mlx_vlm's batch caches (``KVCache.merge`` -> ``BatchKVCache``, ``RotatingKVCache.merge``
-> ``BatchRotatingKVCache``; docs/batching.md §1.4), then all rows decode greedily together, one
forward per step, double-buffered like mlx_vlm's ``GenerationBatch._step`` (step t+1 launched before
step t's tokens are read). EOS is ignored: every row decodes exactly ``max_tokens`` tokens.

Started like bench/_raw.py on CPU (``prepare()`` re-exec with OpenBLAS preloaded, then
``dequantize_for_cpu(model, "auto")``); with ``--gpu`` neither (the device machine has no
mlx_server install, and the 4-bit weights stay quantized on the GPU).

Protocol: one JSON command per stdin line, one JSON answer per stdout line; times in seconds from the
moment the command was read.
  {"op": "batch", "prompts": [messages, ...], "max_tokens": T, "chunk": C}
      -> {"rows": [{"first_s", "last_s", "generated", "prompt_tokens"}], "decode_s", "steps",
          "batched_decode_tps"}
  {"op": "join", "running": messages, "joiner": messages, "max_tokens": T, "join_after": K,
   "joiner_tokens": J, "chunk": C}
      -> {"times": [token time of the running row...], "join_sent_s", "join_first_s",
          "joiner_prompt_tokens"}  (the joiner is prefilled in C-token chunks, one decode step of
          the running row between chunks, then merged into the batch)
  {"op": "single", "messages": messages, "max_tokens": T}  -> bench._raw's answer
      (``mlx_vlm.stream_generate``, batch 1)
  {"op": "quit"}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

GPU = "--gpu" in sys.argv
if not GPU:
    from ._fastpath import prepare

    prepare()  # re-exec (same pid) with the server's loader environment; no-op once active

Messages = list[dict[str, Any]]


class Runner:
    def __init__(self, model: Any, processor: Any) -> None:
        self.model, self.processor = model, processor
        self.lm = model.language_model
        self.tokenizer = getattr(processor, "tokenizer", processor)

    def ids(self, messages: Messages) -> list[int]:
        from mlx_vlm.prompt_utils import apply_chat_template

        prompt = str(apply_chat_template(self.processor, self.model.config, messages))
        return list(self.tokenizer.encode(prompt, add_special_tokens=False))

    def _forward(self, tokens: Any, cache: list[Any]) -> Any:
        out = self.lm(tokens, cache=cache)
        logits = out.logits if hasattr(out, "logits") else out
        return logits[:, -1, :]

    def prefill_chunks(self, ids: list[int], chunk: int) -> tuple[list[Any], Any]:
        """A fresh single-row cache and a generator: each ``next`` runs one chunk; the last yields the
        first token (an array of shape (1,))."""
        import mlx.core as mx
        from mlx_vlm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.lm)
        tokens = mx.array(ids)[None]

        def run() -> Any:
            done = 0
            while len(ids) - done > 1:
                n = min(chunk, len(ids) - 1 - done)
                self.lm(tokens[:, done:done + n], cache=cache)
                mx.eval([c.state for c in cache])
                done += n
                yield None
            first = mx.argmax(self._forward(tokens[:, -1:], cache), axis=-1)
            mx.eval(first)
            yield first

        return cache, run()

    def prefill(self, ids: list[int], chunk: int) -> tuple[list[Any], Any]:
        cache, steps = self.prefill_chunks(ids, chunk)
        results = list(steps)  # every chunk, then the first token
        return cache, results[-1]

    @staticmethod
    def merge(rows: list[list[Any]]) -> list[Any]:
        """Per layer, the rows' single caches merged into one batch cache (row order kept)."""
        return [type(layer[0]).merge(list(layer)) for layer in zip(*rows, strict=True)]

    def step(self, tokens: Any, cache: list[Any]) -> Any:
        import mlx.core as mx

        return mx.argmax(self._forward(tokens[:, None], cache), axis=-1)

    def batch(self, command: dict[str, Any]) -> dict[str, Any]:
        import mlx.core as mx

        start = time.perf_counter()
        max_tokens, chunk = int(command["max_tokens"]), int(command.get("chunk", 2048))
        caches, firsts, rows = [], [], []
        for messages in command["prompts"]:
            ids = self.ids(messages)
            cache, first = self.prefill(ids, chunk)
            caches.append(cache)
            firsts.append(first)
            rows.append({"first_s": time.perf_counter() - start, "prompt_tokens": len(ids), "generated": 1})
        batch = self.merge(caches)
        tokens = mx.concatenate(firsts)
        decode_start = time.perf_counter()
        steps = max_tokens - 1
        async_eval: Any = mx.async_eval  # untyped in mlx's stubs
        pending: Any = self.step(tokens, batch)
        async_eval(pending)
        for n in range(steps):
            current = pending
            if n + 1 < steps:
                pending = self.step(current, batch)
                async_eval(pending)
            current.tolist()  # the host has this step's tokens: a streaming server could send them
            now = time.perf_counter() - start
            for row in rows:
                row["generated"] += 1
                row["last_s"] = now
        decode_s = time.perf_counter() - decode_start
        for row in rows:
            row.setdefault("last_s", row["first_s"])
        return {"rows": rows, "decode_s": decode_s, "steps": steps,
                "batched_decode_tps": len(rows) * steps / decode_s if steps and decode_s > 0 else None}

    def join(self, command: dict[str, Any]) -> dict[str, Any]:
        import mlx.core as mx

        start = time.perf_counter()
        max_tokens, chunk = int(command["max_tokens"]), int(command.get("chunk", 2048))
        joiner_tokens, join_after = int(command.get("joiner_tokens", 8)), int(command["join_after"])
        cache, first = self.prefill(self.ids(command["running"]), chunk)
        batch = self.merge([cache])
        times = [time.perf_counter() - start]
        tokens = first
        joiner_ids = self.ids(command["joiner"])
        joined: dict[str, Any] = {"joiner_prompt_tokens": len(joiner_ids)}
        joiner_steps = None
        joiner_cache: list[Any] = []
        joiner_left = 0
        while len(times) < max_tokens:
            if len(times) == join_after and joiner_steps is None:
                joined["join_sent_s"] = time.perf_counter() - start
                joiner_cache, joiner_steps = self.prefill_chunks(joiner_ids, chunk)
            if joiner_steps is not None and "join_first_s" not in joined:
                result = next(joiner_steps)  # one prefill chunk between two decode steps
                if result is not None:
                    for layer, single in zip(batch, self.merge([joiner_cache]), strict=True):
                        layer.extend(single)
                    tokens = mx.concatenate([tokens, result])
                    joined["join_first_s"] = time.perf_counter() - start
                    joiner_left = joiner_tokens - 1
            tokens = self.step(tokens, batch)
            mx.eval(tokens)
            times.append(time.perf_counter() - start)
            if tokens.shape[0] > 1:
                joiner_left -= 1
                if joiner_left <= 0:  # the joiner is done: keep the running row only
                    for layer in batch:
                        layer.filter(mx.array([0]))
                    tokens = tokens[:1]
        return {"times": times, **joined}


def single(model: Any, processor: Any, command: dict[str, Any]) -> dict[str, Any]:
    """``mlx_vlm.stream_generate``, batch 1 (what bench/_raw.py measures), greedy."""
    from mlx_vlm.generate import stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template

    prompt = str(apply_chat_template(processor, model.config, command["messages"]))
    start = time.perf_counter()
    first = None
    last = None
    for result in stream_generate(model, processor, prompt, max_tokens=command["max_tokens"],
                                  temperature=0.0):
        if first is None and result.text:
            first = time.perf_counter() - start
        last = result
    assert last is not None
    return {"ttft_s": first if first is not None else time.perf_counter() - start,
            "decode_tps": last.generation_tps, "prompt_tokens": last.prompt_tokens,
            "generated": last.generation_tokens}


def _serve(model_dir: str) -> None:
    import mlx.core as mx
    from mlx_vlm.utils import load

    model, processor = load(model_dir)
    info: dict[str, Any] = {"ready": True, "device": str(mx.default_device())}
    if not GPU:
        from mlx_server.adapters.mlx.dequantize import dequantize_for_cpu

        from ._fastpath import blas_in_use

        info["weights"] = dequantize_for_cpu(model, "auto")
        info["blas"] = blas_in_use()
    runner = Runner(model, processor)
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.get("op")
        if op == "quit":
            break
        if op == "batch":
            answer = runner.batch(command)
        elif op == "join":
            answer = runner.join(command)
        else:
            answer = single(model, processor, command)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    _serve(next(arg for arg in sys.argv[1:] if arg != "--gpu"))
