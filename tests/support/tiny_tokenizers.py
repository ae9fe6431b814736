"""Small BPE tokenizers with the real Gemma 3 / Qwen3(-VL) special tokens and pipelines.

Each builder trains a tiny BPE with ``tokenizers`` on a fixed corpus (deterministic) and
returns a ``Tokenizer`` whose length is exactly the requested vocab size. The pipelines
mirror transformers 5's ``GemmaTokenizer`` / ``Qwen2Tokenizer`` (and the real tokenizer.json
files), so mlx_vlm picks the same streaming detokenizer as for the real checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

GEMMA_SPECIALS: tuple[str, ...] = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
)
GEMMA_IMAGE_TOKEN = "<image_soft_token>"
GEMMA_VOCAB_SIZE = 768

# Qwen2/3 added tokens, in Qwen's id order (151643...), with their `special` flag.
QWEN_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN_MARKERS: list[str] = [t for t, special in QWEN_ADDED if special and t != "<|endoftext|>"]
QWEN_BPE_SIZE = 577  # so that <|endoftext|> is 577 and the total is 603
QWEN_FIRST_ADDED_ID = QWEN_BPE_SIZE
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS_LINES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Describe this image in one sentence. What is shown in the picture?",
    "You are a helpful assistant. Answer the question about the image.",
    "Where is this? What is the weather there today and tomorrow?",
    "The weather in Paris is sunny with a temperature of 21 degrees celsius.",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    '{"type": "function", "function": {"description": "Get the current weather"}}',
    "```tool_code\nprint(get_weather(city='London'))\n```",
    '```tool_output\n{"temperature": 18, "condition": "cloudy"}\n```',
    "def main() -> None:\n    for item in items:\n        print(item)\n\n",
    "A red square, a green circle and a blue triangle on a white background.",
    "Photographs of cats, dogs, birds, horses, trees, mountains and rivers.",
    "Please summarize the following document and list the key points.\n\n",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and punctuation: , . ; : ! ? ( ) [ ] { }",
    "system user assistant model tool function parameters properties required",
    "Hello, world! How are you doing? I am fine, thank you very much.",
)


def corpus() -> list[str]:
    """The fixed training corpus (repeated so that frequent pairs are stable)."""
    return [line for _ in range(3) for line in _CORPUS_LINES]


def _train_gemma_pieces(n_pieces: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Train SentencePiece-style pieces ("▁"-prefixed words); return vocab order and merges."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=n_pieces, show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    vocab = tok.get_vocab()
    pieces = sorted(vocab, key=vocab.__getitem__)[:n_pieces]
    kept = set(pieces)
    merges = [(a, b) for a, b in _merges_of(tok) if a in kept and b in kept and a + b in kept]
    return pieces, merges


def _merges_of(tok: Tokenizer) -> list[tuple[str, str]]:
    raw = json.loads(tok.to_str())["model"]["merges"]
    pairs = [m if isinstance(m, list) else m.split(" ", 1) for m in raw]
    return [(a, b) for a, b in pairs]


def build_gemma_tokenizer() -> Tokenizer:
    """Gemma-style BPE: specials 0-8, 256 byte tokens, trained pieces, image token last."""
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    n_pieces = GEMMA_VOCAB_SIZE - len(GEMMA_SPECIALS) - len(byte_tokens) - 1
    pieces, merges = _train_gemma_pieces(n_pieces)
    if len(pieces) != n_pieces:
        raise RuntimeError(f"corpus too small: {len(pieces)} < {n_pieces} pieces")
    order = [*GEMMA_SPECIALS, *byte_tokens, *pieces, GEMMA_IMAGE_TOKEN]
    vocab = {t: i for i, t in enumerate(order)}
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    tok.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in GEMMA_SPECIALS]
        + [AddedToken(GEMMA_IMAGE_TOKEN, normalized=False, special=True)]
    )
    return tok


def build_qwen_tokenizer() -> Tokenizer:
    """Qwen2-style byte-level BPE (577 entries) followed by Qwen's 26 added tokens."""
    tok = Tokenizer(
        models.BPE(
            continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    # the stubs omit these kwargs; the real Qwen tokenizer.json has them all false
    tok.decoder = decoders.ByteLevel(  # type: ignore[call-arg]
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    trainer = trainers.BpeTrainer(
        vocab_size=QWEN_BPE_SIZE,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if tok.get_vocab_size() != QWEN_BPE_SIZE:
        raise RuntimeError(f"corpus too small: {tok.get_vocab_size()} < {QWEN_BPE_SIZE}")
    for content, special in QWEN_ADDED:
        added = AddedToken(content, normalized=False, special=special)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    return tok


# --------------------------------------------------------------------- HF tokenizer files

JsonDict = dict[str, Any]
GEMMA_IMAGE_TOKENS: JsonDict = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": GEMMA_IMAGE_TOKEN,
}


def write_json(path: Path, data: JsonDict) -> None:
    """Write ``data`` as indented UTF-8 JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _token_entry(content: str) -> JsonDict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def _added_tokens_decoder(tok: Tokenizer, special_of: dict[str, bool]) -> JsonDict:
    vocab = tok.get_vocab()
    return {str(vocab[t]): {**_token_entry(t), "special": s} for t, s in special_of.items()}


def gemma_tokenizer_config(tok: Tokenizer, template: str) -> JsonDict:
    """tokenizer_config.json in the layout of google/gemma-3-4b-it's."""
    specials = {t: True for t in (*GEMMA_SPECIALS, GEMMA_IMAGE_TOKEN)}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder(tok, specials),
        **GEMMA_IMAGE_TOKENS,
        "bos_token": "<bos>",
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>",
        "extra_special_tokens": GEMMA_IMAGE_TOKENS,
        "mask_token": "<mask>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "Gemma3Processor",
        "sp_model_kwargs": None,
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def write_gemma_tokenizer_files(out_dir: Path, template: str) -> int:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json; returns the vocab size."""
    tok = build_gemma_tokenizer()
    tok.save(str(out_dir / "tokenizer.json"))
    write_json(out_dir / "tokenizer_config.json", gemma_tokenizer_config(tok, template))
    special_map = {f"{t[1:-1]}_token": _token_entry(t) for t in ("<bos>", "<eos>", "<pad>")}
    special_map["unk_token"] = _token_entry("<unk>")
    write_json(out_dir / "special_tokens_map.json", {**GEMMA_IMAGE_TOKENS, **special_map})
    return int(tok.get_vocab_size(with_added_tokens=True))


def qwen_tokenizer_config(tok: Tokenizer, template: str, max_length: int = 262144) -> JsonDict:
    """tokenizer_config.json in the layout of Qwen/Qwen3-VL-4B-Instruct's (Qwen/Qwen3-4B's has
    the same fields, with a 131072 `model_max_length`)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(tok, dict(QWEN_ADDED)),
        "additional_special_tokens": QWEN_MARKERS,
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_qwen_tokenizer_files(out_dir: Path, template: str, max_length: int = 262144) -> int:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json; returns the vocab size."""
    tok = build_qwen_tokenizer()
    tok.save(str(out_dir / "tokenizer.json"))
    write_json(out_dir / "tokenizer_config.json", qwen_tokenizer_config(tok, template, max_length))
    special_map = {
        "additional_special_tokens": QWEN_MARKERS,
        "eos_token": _token_entry("<|im_end|>"),
        "pad_token": _token_entry("<|endoftext|>"),
    }
    write_json(out_dir / "special_tokens_map.json", special_map)
    return int(tok.get_vocab_size(with_added_tokens=True))
