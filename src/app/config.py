"""Settings, read once from the command line and the environment. The only reader of os.environ.

Every flag `--some-flag` also reads `MLX_SERVER_SOME_FLAG` from the environment (the command line
wins), which is how ASGI servers that import the app (gunicorn, uvicorn --factory) configure it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

ENGINES = ("mlx", "fake")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _cache_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "mlx-server"


@attrs.frozen
class Settings:
    host: str = "127.0.0.1"
    port: int = 1234
    model: str | None = None  # preloaded at startup; requests may name any other
    fallback_model: str | None = "smollm"  # preloaded instead when `model` cannot be had
    engine: str = "mlx"
    cpu_weights: str = "auto"  # on the CPU: dequantize 4/8-bit layers for the fast BLAS path
    fake_replies: Path | None = None
    fake_delay: float = 0.0  # fake engine: seconds per token (tests of slow streams)
    cache_dir: Path = attrs.field(factory=lambda: _cache_dir(os.environ))  # converted GGUF models
    max_body_mb: float = 64.0
    max_tokens_cap: int = 4096
    max_image_bytes: int = 20 * 1024 * 1024
    allow_private_image_urls: bool = False
    prefix_cache: bool = True
    prefix_cache_mb: int | None = None  # None: sized from the machine
    # prompt tokens per prefill pass; a cancel is seen between passes. None: by device (MlxEngine)
    prefill_chunk: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    max_queue: int = 16
    queue_timeout: float = 600.0
    swap_batch: int = 4  # later requests for the loaded model served before an older swap
    idle_unload: float = 0.0  # seconds without requests before the model is freed; 0: never
    api_key: str | None = attrs.field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    log_level: str = "info"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


# flag -> (Settings field, type, help); the default comes from Settings
_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--model", "model", str, "model to preload: an alias (gemma, qwen, smollm), a repo id or a path"),
    ("--fallback-model", "fallback_model", str, "preloaded instead when --model cannot be had ('' for none)"),
    ("--cache-dir", "cache_dir", Path, "where models converted from GGUF are kept"),
    ("--host", "host", str, "address to listen on"),
    ("--port", "port", int, "port to listen on"),
    ("--engine", "engine", str, "mlx (real inference) or fake (no weights, for tests and demos)"),
    ("--cpu-weights", "cpu_weights", str, "CPU only: auto|dequantize|keep quantized layers"),
    ("--fake-replies", "fake_replies", Path, "fake engine: a JSON list of raw model outputs"),
    ("--fake-delay", "fake_delay", float, "fake engine: seconds per streamed token"),
    ("--max-body-mb", "max_body_mb", float, "larger request bodies get 413"),
    ("--max-tokens-cap", "max_tokens_cap", int, "completion length when a request sets none"),
    ("--max-image-bytes", "max_image_bytes", int, "largest image accepted"),
    ("--prefix-cache-mb", "prefix_cache_mb", int, "KV prefix cache budget (default: from RAM)"),
    ("--prefill-chunk", "prefill_chunk", int, "prompt tokens per prefill pass: a client that "
     "leaves is noticed between passes (default: 128 on the CPU, 1024 on a GPU)"),
    ("--max-queue", "max_queue", int, "requests that may wait for the model; more get 503"),
    ("--queue-timeout", "queue_timeout", float, "seconds a request may wait before a 503"),
    ("--swap-batch", "swap_batch", int, "later requests for the loaded model served before a swap"),
    ("--idle-unload", "idle_unload", float, "free the model after this many idle seconds (0: never)"),
    ("--api-key", "api_key", str, "require 'Authorization: Bearer KEY' on /v1/*"),
    ("--log-level", "log_level", str, "|".join(LOG_LEVELS)),
)
_SWITCHES = (  # flag -> (Settings field, value when given, help)
    ("--allow-private-image-urls", "allow_private_image_urls", True,
     "let image URLs reach loopback/private addresses (local setups only)"),
    ("--no-prefix-cache", "prefix_cache", False, "turn the KV prefix cache off"),
)
_CHOICES = {"engine": ENGINES, "cpu_weights": ("auto", "dequantize", "keep"), "log_level": LOG_LEVELS}


def add_serve_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    defaults = Settings()
    for flag, field, kind, help_text in _FLAGS:
        env = environ.get(_env_name(flag))
        default = kind(env) if env is not None else getattr(defaults, field)
        parser.add_argument(flag, dest=field, type=kind, default=default, help=help_text,
                            choices=_CHOICES.get(field))
    for flag, field, value, help_text in _SWITCHES:
        given = environ.get(_env_name(flag), "").lower() in ("1", "true", "yes")
        parser.add_argument(flag, dest=field, action="store_const", const=value,
                            default=value if given else getattr(defaults, field), help=help_text)
    origins = environ.get("MLX_SERVER_CORS_ORIGINS", "")
    parser.add_argument("--cors-origins", dest="cors_origins", default=origins,
                        help="comma-separated origins browsers may call from (default: none)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {field.name: getattr(args, field.name) for field in attrs.fields(Settings)
              if hasattr(args, field.name)}
    values["fallback_model"] = values.get("fallback_model") or None
    values["api_key"] = values.get("api_key") or None
    values["cors_origins"] = tuple(o.strip() for o in str(values.get("cors_origins", "")).split(",")
                                   if o.strip())
    return Settings(**values)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """For ASGI servers that import the app (gunicorn, uvicorn --factory): MLX_SERVER_* vars."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, os.environ if environ is None else environ)
    return settings_from_args(parser.parse_args([]))


def _env_name(flag: str) -> str:
    return "MLX_SERVER_" + flag.lstrip("-").replace("-", "_").upper()
