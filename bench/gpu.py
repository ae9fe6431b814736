"""GPU decode row: batch-1 decode tokens/s of a random-weight 4-bit checkpoint with the shape of
gemma-3-4b-it, built on the device from its config (mlx_vlm's own Model class + quantize_model, as
tests/support/tiny_models.py does for the tiny one), and its ratio to the memory-bandwidth bound
(language-model bytes read per token ÷ the card's bandwidth).

Runs on the ``device`` tool's machine (NVIDIA, ``mlx[cuda13]``), see bench/GPU.md for how the wheels
travel. Needs no network and no tokenizer: decoding starts from random token ids with mlx_vlm's own
``generate_step`` (greedy). Prints one JSON line and writes it to --json.

Run (on the device): python bench/gpu.py [--tokens 256] [--runs 5] [--prompt 64] [--json PATH]
    prefill per chunk size: python bench/gpu.py --prompt 4096 --prefill-chunks 128,256,512,2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from typing import Any, cast

# gemma-3-4b-it config.json (google/gemma-3-4b-it), shape only: the weights are random
GEMMA3_4B: dict[str, Any] = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "torch_dtype": "bfloat16",
    "text_config": {
        "model_type": "gemma3_text",
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 262208,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 131072,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
}
# datasheet HBM bandwidth, bytes/s, by the name nvidia-smi reports
BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 SXM": 3.35e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12,
             "H200": 4.8e12, "GH200": 4.0e12}


def card() -> tuple[str, float | None]:
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "no nvidia-smi", None
    for key, value in BANDWIDTH.items():
        if key in name:
            return name, value
    return name, None


def build(group_size: int, bits: int,
          text_overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    import copy

    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_vlm.quant_utils import quantize_model
    from mlx_vlm.utils import get_model_and_args, skip_multimodal_module, update_module_configs

    config = copy.deepcopy(GEMMA3_4B)
    config["text_config"].update(text_overrides or {})
    mx.random.seed(0)
    model_class, _ = get_model_and_args(config)
    model_config = model_class.ModelConfig.from_dict(config)
    model_config = update_module_configs(  # type: ignore[no-untyped-call, unused-ignore]
        model_config, model_class, config, ["text", "vision", "perceiver", "projector", "audio"])
    model = model_class.Model(model_config)
    model.update(tree_map(lambda a: a.astype(mx.bfloat16) if mx.issubdtype(a.dtype, mx.floating) else a,
                          model.parameters()))
    lm = model.language_model
    if hasattr(lm, "lm_head"):  # gemma3 ties the output projection to the embedding
        lm.lm_head.weight = lm.model.embed_tokens.weight
    model, config = quantize_model(model, config, group_size, bits, mode="affine",
                                   quant_predicate=lambda path, _m: not skip_multimodal_module(path))
    mx.eval(model.parameters())
    return model, config


# ---------------------------------------------------------------- a checkpoint directory (--save)

# Gemma 3's special tokens at their real ids (config: eos [1, 106], boi 255999, eoi 256000, image 262144)
SPECIALS = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 105: "<start_of_turn>",
            106: "<end_of_turn>", 255999: "<start_of_image>", 256000: "<end_of_image>",
            262144: "<image_soft_token>"}
FIRST_CHAR = 5  # ids 5..98: the 94 printable non-space ASCII characters; every other id: a word
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def visible_tokenizer(vocab_size: int) -> Any:
    """A byte-free word-level tokenizer where every id decodes to visible text on its own: Gemma's
    specials at their ids, one id per printable ASCII character (prompts are split into characters,
    whitespace dropped, so distinct prompts give distinct ids), and ``w<id>`` for every other id.
    A random model's streamed text then grows by one visible word per token (a byte-fallback BPE
    would hold random byte tokens back until they form UTF-8), so per-token timing can be read."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for i in range(vocab_size):
        if i in SPECIALS:
            vocab[SPECIALS[i]] = i
        elif FIRST_CHAR <= i < FIRST_CHAR + len(chars):
            vocab[chars[i - FIRST_CHAR]] = i
        else:
            vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS.values()])
    return tok


def _write_json(path: Any, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_tokenizer_files(out_dir: Any, vocab_size: int) -> None:
    """tokenizer.json (visible_tokenizer), tokenizer_config.json, the Gemma 3 processor files."""
    image_tokens = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                    "image_token": "<image_soft_token>"}
    visible_tokenizer(vocab_size).save(str(out_dir / "tokenizer.json"))
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    _write_json(out_dir / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": t, **entry} for i, t in SPECIALS.items()},
        **image_tokens, "extra_special_tokens": image_tokens, "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>", "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "model_max_length": 131072, "padding_side": "left",
        "processor_class": "Gemma3Processor", "tokenizer_class": "PreTrainedTokenizerFast"})
    _write_json(out_dir / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    mm = GEMMA3_4B["mm_tokens_per_image"]
    _write_json(out_dir / "preprocessor_config.json", {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": mm, "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": GEMMA3_4B["vision_config"]["image_size"],
                 "width": GEMMA3_4B["vision_config"]["image_size"]}})
    _write_json(out_dir / "processor_config.json",
                {"image_seq_length": mm, "processor_class": "Gemma3Processor"})
    _write_json(out_dir / "generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, 106],
                                                     "pad_token_id": 0})


def save_checkpoint(model: Any, config: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """The built model as a checkpoint directory mlx_vlm's ``load`` (and so both servers) can open."""
    from pathlib import Path

    from mlx_vlm.utils import save_config, save_weights

    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    save_weights(path, model)
    save_config(config, path / "config.json")
    write_tokenizer_files(path, config["text_config"]["vocab_size"])
    return {"saved": str(path), "save_s": time.perf_counter() - start}


def nbytes(tree: Any) -> int:
    from mlx.utils import tree_flatten

    seen: set[int] = set()
    total = 0
    for _, array in cast(list[tuple[str, Any]], tree_flatten(tree)):
        if id(array) not in seen:
            seen.add(id(array))
            total += array.nbytes
    return total


def weights_pass(model: Any) -> dict[str, float]:
    """Every quantized linear layer of the language model applied once to a 1-token input, all in one
    graph: the weight reads of a decode step with nothing else (no attention, norms, sampling, sync
    per token). Its time against the bandwidth bound splits the gap between kernels and the rest."""
    import mlx.core as mx
    import mlx.nn as nn

    quantized: Any = cast(Any, nn).QuantizedLinear  # not in mlx's stubs
    layers = [m for _, m in model.language_model.named_modules() if isinstance(m, quantized)]
    inputs = [mx.random.normal((1, 1, m.weight.shape[1] * 32 // m.bits)).astype(mx.bfloat16) for m in layers]
    mx.eval(inputs)
    read = sum(m.weight.nbytes + m.scales.nbytes + (m.biases.nbytes if m.biases is not None else 0)
               for m in layers)
    times = []
    for _ in range(12):
        start = time.perf_counter()
        mx.eval([m(x) for m, x in zip(layers, inputs, strict=True)])
        mx.synchronize()
        times.append(time.perf_counter() - start)
    best = min(times[2:])
    return {"layers": len(layers), "bytes": read, "best_s": best, "median_s": statistics.median(times[2:]),
            "bandwidth": read / best}


def measured_bandwidth() -> float:
    """Device copy bandwidth (read + write) of a 2 GiB array: what memory-bound kernels can reach."""
    import mlx.core as mx

    a = mx.zeros((512, 1024, 1024), dtype=mx.float32)
    mx.eval(a)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        b = a + 1
        mx.eval(b)
        mx.synchronize()
        best = max(best, 2 * a.nbytes / (time.perf_counter() - start))
        del b
    return best


def decode(model: Any, prompt: int, tokens: int) -> dict[str, float]:
    import mlx.core as mx
    from mlx_vlm.generate.ar import generate_step

    ids = mx.random.randint(2, 200000, (1, prompt))
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    for _token, _ in generate_step(ids, model, None, None, max_tokens=tokens, temperature=0.0):
        count += 1
        last = time.perf_counter()
        first = first or last
    return {"ttft_s": first - start, "decode_tps": (count - 1) / (last - first), "tokens": count}


def prefill_seconds(model: Any, prompt: int, chunk: int) -> float:
    """Time to the first token of a `prompt`-token prompt prefilled in `chunk`-token passes."""
    import mlx.core as mx
    from mlx_vlm.generate.ar import generate_step

    ids = mx.random.randint(2, 200000, (1, prompt))
    start = time.perf_counter()
    for _ in generate_step(ids, model, None, None, max_tokens=1, temperature=0.0,
                           prefill_step_size=chunk):
        pass
    return time.perf_counter() - start


def prefill_chunks(model: Any, prompt: int, chunks: list[int], runs: int) -> dict[str, Any]:
    """--prefill-chunk's trade-off: prefill speed per chunk size (interleaved runs, median) and the
    mean time of one chunk, about how long a cancelled request keeps the GPU."""
    prefill_seconds(model, prompt, max(chunks))  # warm-up
    times: dict[int, list[float]] = {chunk: [] for chunk in chunks}
    for _ in range(runs):
        for chunk in chunks:
            times[chunk].append(prefill_seconds(model, prompt, chunk))
    base = statistics.median(times[max(chunks)])
    return {str(chunk): {"prefill_tps": prompt / statistics.median(t),
                         "s_per_chunk": statistics.median(t) * min(chunk, prompt) / prompt,
                         "time_vs_largest": statistics.median(t) / base, "values": t}
            for chunk, t in times.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--prefill-chunks", default=None,
                        help="e.g. 128,256,512,2048: measure prefill per chunk size instead")
    parser.add_argument("--json", default=None)
    parser.add_argument("--save", default=None, metavar="DIR",
                        help="write the checkpoint (weights, config, a visible-word tokenizer, processor "
                             "files) to DIR for the servers, then exit")
    parser.add_argument("--layers", type=int, default=None,
                        help="fewer layers (a local smoke test of --save)")
    return parser.parse_args()


def emit(report: dict[str, Any], path: str | None) -> None:
    """One JSON line on stdout, and in ``path`` when given."""
    line = json.dumps(report)
    print(line)
    if path:
        with open(path, "w") as handle:
            handle.write(line + "\n")


def byte_budget(model: Any, prompt: int, tokens: int) -> dict[str, Any]:
    """Bytes read per decoded token: every language-model weight once (the embedding table: one
    row), plus the KV cache at the mean context length of a run."""
    lm_bytes = nbytes(model.language_model.parameters())
    # the embedding table is a separate (quantized) copy of the output projection once quantized: a
    # decode step reads one row of it, and the output projection (lm_head) in full
    embed = model.language_model.model.embed_tokens
    embed_bytes = nbytes(embed.parameters())
    embed_row = embed_bytes // embed.weight.shape[0]
    text = model.config.text_config
    ctx = prompt + tokens / 2
    kv_bytes = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * ctx * 2
    return {"lm_bytes": lm_bytes, "vision_bytes": nbytes(model.parameters()) - lm_bytes,
            "embed_table_bytes": embed_bytes, "kv_bytes_per_token": kv_bytes,
            "bytes_per_token": lm_bytes - embed_bytes + embed_row + kv_bytes}


def decode_report(model: Any, args: argparse.Namespace, datasheet: float | None) -> dict[str, Any]:
    budget = byte_budget(model, args.prompt, args.tokens)
    decode(model, args.prompt, 8)  # warm-up (kernel compilation), excluded
    runs = [decode(model, args.prompt, args.tokens) for _ in range(args.runs)]
    tps = [r["decode_tps"] for r in runs]
    per_token, median = budget["bytes_per_token"], statistics.median(tps)
    copy_bw = measured_bandwidth()
    weights = weights_pass(model)
    result: dict[str, Any] = {
        **budget, "prompt_tokens": args.prompt, "decode_tokens": args.tokens, "runs": args.runs,
        "decode_tps": {"median": median, "min": min(tps), "max": max(tps), "values": tps},
        "ttft_s": statistics.median(r["ttft_s"] for r in runs),
        "datasheet_bw": datasheet, "measured_copy_bw": copy_bw,
        "bound_tps_datasheet": datasheet / per_token if datasheet else None,
        "bound_tps_measured": copy_bw / per_token, "weights_pass": weights, "ms_per_token": 1000 / median}
    if datasheet:
        result["ratio_to_datasheet_bound"] = median / result["bound_tps_datasheet"]
    result["ratio_to_measured_bound"] = median / result["bound_tps_measured"]
    return result


def main() -> None:
    args = parse_args()
    import importlib.metadata as md

    import mlx.core as mx

    name, datasheet = card()
    start = time.perf_counter()
    overrides = {"num_hidden_layers": args.layers} if args.layers else None
    model, config = build(64, 4, overrides)
    build_s = time.perf_counter() - start
    if args.save:
        emit({"build_s": build_s, **save_checkpoint(model, config, args.save)}, args.json)
        return
    if args.prefill_chunks:
        chunks = [int(c) for c in args.prefill_chunks.split(",")]
        emit({"gpu": name, "mlx": md.version("mlx"), "prompt_tokens": args.prompt, "runs": args.runs,
              "chunks": prefill_chunks(model, args.prompt, chunks, args.runs)}, args.json)
        return
    emit({"device": str(mx.default_device()), "gpu": name, "mlx": md.version("mlx"),
          "mlx_vlm": md.version("mlx-vlm"), "checkpoint": "random-weight gemma-3-4b-it shape, 4-bit affine, "
          "group 64 (vision tower kept bf16)", "build_s": build_s,
          **decode_report(model, args, datasheet)}, args.json)


if __name__ == "__main__":
    main()
