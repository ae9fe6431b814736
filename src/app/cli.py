"""The `mlx-server` command."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import uvicorn

from .bootstrap import build
from .config import add_serve_arguments, settings_from_args


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlx-server",
                                     description="OpenAI-compatible server for MLX models")
    add_serve_arguments(parser, os.environ)
    settings = settings_from_args(parser.parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                lifespan="on", timeout_graceful_shutdown=5)
