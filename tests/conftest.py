from __future__ import annotations

import os

# Tests never reach the Hugging Face hub, and MLX's kernel JIT costs more than it saves on
# the tiny test models. Set before anything imports huggingface_hub or mlx.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
