"""Settings, read once from the command line and the environment. The only reader of os.environ."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

ENGINES = ("mlx", "fake")


@attrs.frozen
class Settings:
    host: str = "127.0.0.1"
    port: int = 1234
    model: str | None = None  # preloaded at startup; requests may name any other
    fallback_model: str | None = "smollm"  # preloaded instead when `model` cannot be had
    engine: str = "mlx"
    cpu_weights: str = "auto"  # on the CPU: dequantize 4/8-bit layers for the fast BLAS path
    fake_replies: Path | None = None
    cache_dir: Path = attrs.field(factory=lambda: _cache_dir({}))  # models converted from GGUF
    max_body_bytes: int = 64 * 1024 * 1024
    max_tokens_cap: int = 4096
    max_image_bytes: int = 20 * 1024 * 1024
    allow_private_image_urls: bool = False
    log_level: str = "info"


def add_serve_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    defaults = Settings()
    parser.add_argument("--model", default=environ.get("MLX_SERVER_MODEL", defaults.model),
                        help="model to preload: an alias (gemma, qwen, smollm), a repo id or a path")
    parser.add_argument("--fallback-model",
                        default=environ.get("MLX_SERVER_FALLBACK_MODEL", defaults.fallback_model),
                        help="preloaded instead when --model cannot be had ('' for none)")
    parser.add_argument("--cache-dir", type=Path, default=_cache_dir(environ),
                        help="where models converted from GGUF are kept")
    parser.add_argument("--host", default=environ.get("MLX_SERVER_HOST", defaults.host))
    parser.add_argument("--port", type=int,
                        default=int(environ.get("MLX_SERVER_PORT", defaults.port)))
    parser.add_argument("--engine", choices=ENGINES,
                        default=environ.get("MLX_SERVER_ENGINE", defaults.engine))
    parser.add_argument("--cpu-weights", choices=("auto", "dequantize", "keep"),
                        default=environ.get("MLX_SERVER_CPU_WEIGHTS", defaults.cpu_weights),
                        help="CPU device only: dequantize quantized layers to float32 (auto: when "
                             "they fit comfortably in memory); never on Metal or CUDA")
    parser.add_argument("--fake-replies", type=Path, default=None, metavar="FILE",
                        help="fake engine: a JSON list of raw model outputs, used in order, cycling")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-tokens-cap", type=int, default=defaults.max_tokens_cap,
                        help="completion length when a request sets no max_tokens")
    parser.add_argument("--max-image-bytes", type=int, default=defaults.max_image_bytes,
                        help="largest image (data URI or download) accepted")
    parser.add_argument("--allow-private-image-urls", action="store_true",
                        help="let image URLs reach loopback/private addresses (local setups only)")
    parser.add_argument("--log-level", default=defaults.log_level,
                        choices=("critical", "error", "warning", "info", "debug"))


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(host=args.host, port=args.port, model=args.model,
                    fallback_model=args.fallback_model or None, engine=args.engine,
                    cpu_weights=args.cpu_weights,
                    fake_replies=args.fake_replies, cache_dir=args.cache_dir,
                    max_body_bytes=args.max_body_bytes, max_tokens_cap=args.max_tokens_cap,
                    max_image_bytes=args.max_image_bytes,
                    allow_private_image_urls=args.allow_private_image_urls, log_level=args.log_level)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """For ASGI servers that import the app (gunicorn, uvicorn --factory): MLX_SERVER_* vars."""
    parser = argparse.ArgumentParser()
    env = os.environ if environ is None else environ
    add_serve_arguments(parser, env)
    args = parser.parse_args(_env_flags(env))
    return settings_from_args(args)


def _cache_dir(environ: Mapping[str, str]) -> Path:
    if explicit := environ.get("MLX_SERVER_CACHE_DIR"):
        return Path(explicit).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "mlx-server"


def _env_flags(environ: Mapping[str, str]) -> Sequence[str]:
    replies = environ.get("MLX_SERVER_FAKE_REPLIES")
    return ["--fake-replies", replies] if replies else []
