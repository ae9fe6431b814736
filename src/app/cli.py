"""The `mlx-server` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from ..adapters.http.transport import head_deadline_protocol
from .bootstrap import build
from .config import add_serve_arguments, settings_from_args, settings_from_env


def main(argv: Sequence[str] | None = None) -> None:
    if argv is None:  # a real process start (not a call from tests): nothing has imported mlx yet
        from .process import prepare_process

        prepare_process(os.environ)  # Linux CPU: may re-exec with OpenBLAS preloaded
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["pull"], ["models"]):
        raise SystemExit(_store_command(args))
    if args[:1] == ["fleet"]:
        from .fleet import main as fleet

        raise SystemExit(fleet(args[1:]))
    parser = argparse.ArgumentParser(
        prog="mlx-server", description="OpenAI-compatible server for MLX models",
        epilog="other commands: 'mlx-server pull MODEL' downloads a model ahead of time; "
               "'mlx-server models' lists the models available locally; "
               "'mlx-server fleet' runs several servers behind a cache-aware router")
    add_serve_arguments(parser, os.environ)
    try:
        settings = settings_from_args(parser.parse_args(args))
    except ValueError as exc:  # a value argparse's types let through (a chunk of 0 tokens)
        parser.error(str(exc))
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                lifespan="on", timeout_graceful_shutdown=5,
                http=head_deadline_protocol(settings.header_timeout),  # h11, with a head deadline
                timeout_keep_alive=settings.keep_alive_timeout)


def _store_command(args: list[str]) -> int:
    from ..adapters.store.aliases import ALIAS_NAMES
    from ..adapters.store.hf_store import HuggingFaceStore
    from . import commands

    parser = argparse.ArgumentParser(prog=f"mlx-server {args[0]}")
    if args[0] == "pull":
        parser.add_argument("model", help=f"an alias ({ALIAS_NAMES}), a repo id or a path")
    parser.add_argument("--cache-dir", type=Path, default=settings_from_env().cache_dir)
    options = parser.parse_args(args[1:])
    store = HuggingFaceStore(options.cache_dir)
    if args[0] == "pull":
        return commands.pull(store, options.model)
    return commands.list_local(store)
