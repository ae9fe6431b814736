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

from ..adapters.images.fetch import ImagePolicy
from ..adapters.store.aliases import ALIAS_NAMES
from ..domain.chat import ChatLimits
from ..domain.lifecycle import StartupPolicy
from ..domain.worker import QueuePolicy

# The domain's policy objects (and the image fetcher's) hold their defaults; Settings only refers
# to them. Adapter options (HttpOptions) have none of their own: their defaults are stated here.
_LIMITS, _QUEUE, _STARTUP, _IMAGES = ChatLimits(), QueuePolicy(), StartupPolicy(), ImagePolicy()

ENGINES = ("mlx", "fake")
FAKE_THINKING = ("none", "hybrid", "forced")
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
    fake_thinking: str = "none"  # fake engine: the thinking mode of its Qwen templates
    cache_dir: Path = attrs.field(factory=lambda: _cache_dir(os.environ))  # converted GGUF models
    # directories whose model directories / .gguf files clients may name; other local paths
    # are servable only when given as --model / --fallback-model
    models_dirs: tuple[Path, ...] = ()
    max_body_mb: float = 64.0
    max_tokens_cap: int = _LIMITS.max_tokens_cap
    max_image_bytes: int = _IMAGES.max_bytes
    # images one request may carry: each is decoded whole (up to 40 MP) before it queues
    max_images: int = attrs.field(default=_LIMITS.max_images, validator=attrs.validators.ge(0))
    allow_private_image_urls: bool = _IMAGES.allow_private
    prefix_cache: bool = True
    prefix_cache_mb: int | None = None  # None: sized from the machine
    # prompt tokens per prefill pass; a cancel is seen between passes. None: by device (MlxEngine)
    prefill_chunk: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    # sequences decoding together (continuous batching). None: by device (bootstrap)
    max_batch: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        [attrs.validators.ge(1), attrs.validators.le(256)]))
    max_queue: int = _QUEUE.max_queue
    queue_timeout: float = _QUEUE.queue_timeout
    swap_batch: int = _QUEUE.max_jumps  # later requests for the loaded model before a swap
    idle_unload: float = _STARTUP.idle_unload  # seconds without requests before the model is freed
    api_key: str | None = attrs.field(default=None, repr=False)
    metrics_auth: bool = False  # /metrics behind the API key too
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host names answered beyond loopback ones; "*": any
    # seconds: an idle connection is closed; a request's head, then its body, must arrive whole
    keep_alive_timeout: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    header_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    body_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    log_level: str = "info"
    # the Responses API's in-memory store (per process): the oldest responses go first
    responses_max_count: int = attrs.field(default=1000, validator=attrs.validators.ge(0))
    responses_max_mb: float = attrs.field(default=64.0, validator=attrs.validators.ge(0))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def responses_max_bytes(self) -> int:
        return int(self.responses_max_mb * 1024 * 1024)


# flag -> (Settings field, type, help); the default comes from Settings
_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--model", "model", str, f"model to preload: an alias ({ALIAS_NAMES}), a repo id or a path"),
    ("--fallback-model", "fallback_model", str, "preloaded instead when --model cannot be had ('' for none)"),
    ("--cache-dir", "cache_dir", Path, "where models converted from GGUF are kept"),
    ("--host", "host", str, "address to listen on"),
    ("--port", "port", int, "port to listen on"),
    ("--engine", "engine", str, "mlx (real inference) or fake (no weights, for tests and demos)"),
    ("--cpu-weights", "cpu_weights", str, "CPU only: auto|dequantize|keep quantized layers"),
    ("--fake-replies", "fake_replies", Path, "fake engine: a JSON list of raw model outputs"),
    ("--fake-delay", "fake_delay", float, "fake engine: seconds per streamed token"),
    ("--fake-thinking", "fake_thinking", str, "fake engine: the Qwen templates' thinking mode: "
     "none (Instruct), hybrid (Qwen3's switch) or forced (a Thinking template)"),
    ("--max-body-mb", "max_body_mb", float, "larger request bodies get 413"),
    ("--max-tokens-cap", "max_tokens_cap", int, "completion length when a request sets none"),
    ("--max-image-bytes", "max_image_bytes", int, "largest image accepted"),
    ("--max-images", "max_images", int, "images one request may carry; more get 400"),
    ("--prefix-cache-mb", "prefix_cache_mb", int, "KV prefix cache budget (default: from RAM)"),
    ("--prefill-chunk", "prefill_chunk", int, "prompt tokens per prefill pass, and per step "
     "while other requests decode: a client that leaves is noticed between passes (default: "
     "128 on the CPU, 1024 on a GPU)"),
    ("--max-batch", "max_batch", int, "requests decoding together (continuous batching; "
     "default 8; 1: one at a time)"),
    ("--max-queue", "max_queue", int, "requests that may wait for the model; more get 503"),
    ("--queue-timeout", "queue_timeout", float, "seconds a request may wait before a 503"),
    ("--swap-batch", "swap_batch", int, "later requests for the loaded model served before a swap"),
    ("--idle-unload", "idle_unload", float, "free the model after this many idle seconds (0: never)"),
    ("--api-key", "api_key", str, "require 'Authorization: Bearer KEY' on all but /health, "
     "/openapi.yaml and /metrics"),
    ("--keep-alive-timeout", "keep_alive_timeout", int, "seconds an idle connection stays open"),
    ("--header-timeout", "header_timeout", float, "seconds a request's headers may take to arrive"),
    ("--body-timeout", "body_timeout", float, "seconds a request body may take to arrive (408)"),
    ("--log-level", "log_level", str, "|".join(LOG_LEVELS)),
    ("--responses-max-count", "responses_max_count", int,
     "responses kept in memory for GET /v1/responses/{id} and previous_response_id (0: none)"),
    ("--responses-max-mb", "responses_max_mb", float,
     "memory those kept responses may take; the oldest go first"),
)
_SWITCHES = (  # flag -> (Settings field, value when given, help)
    ("--allow-private-image-urls", "allow_private_image_urls", True,
     "let image URLs reach loopback/private addresses (local setups only)"),
    ("--no-prefix-cache", "prefix_cache", False, "turn the KV prefix cache off"),
    ("--metrics-auth", "metrics_auth", True, "put /metrics behind --api-key too"),
)
_CHOICES = {"engine": ENGINES, "cpu_weights": ("auto", "dequantize", "keep"), "log_level": LOG_LEVELS,
            "fake_thinking": FAKE_THINKING}


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
    parser.add_argument("--models-dir", dest="models_dirs", action="append", default=None, metavar="DIR",
                        help="serve the model directories and .gguf files in this directory "
                             "(repeatable or comma-separated); other local paths are refused")
    parser.set_defaults(models_dirs_env=environ.get("MLX_SERVER_MODELS_DIR", ""))
    parser.add_argument("--allowed-hosts", dest="allowed_hosts",
                        default=environ.get("MLX_SERVER_ALLOWED_HOSTS", ""),
                        help="comma-separated Host names answered besides localhost/127.0.0.1/"
                             "[::1] ('*': any; default: any when --host is not loopback)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {field.name: getattr(args, field.name) for field in attrs.fields(Settings)
              if hasattr(args, field.name)}
    values["fallback_model"] = values.get("fallback_model") or None
    values["api_key"] = values.get("api_key") or None
    values["cors_origins"] = _comma_list(values.get("cors_origins"))
    values["allowed_hosts"] = _comma_list(values.get("allowed_hosts"))
    dirs = values.get("models_dirs") or [getattr(args, "models_dirs_env", "")]  # flags win
    values["models_dirs"] = tuple(Path(d) for item in dirs for d in _comma_list(item))
    return Settings(**values)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """For ASGI servers that import the app (gunicorn, uvicorn --factory): MLX_SERVER_* vars."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, os.environ if environ is None else environ)
    return settings_from_args(parser.parse_args([]))


def _comma_list(value: object) -> tuple[str, ...]:
    return tuple(item.strip() for item in str(value or "").split(",") if item.strip())


def _env_name(flag: str) -> str:
    return "MLX_SERVER_" + flag.lstrip("-").replace("-", "_").upper()
