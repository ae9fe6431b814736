"""RSS after the first load and after N swaps (smollm -> tiny gemma3 -> tiny qwen3_vl -> smollm ...)
through the real engine and use case. Run: python -m bench.swaps [--swaps 10]"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build_service
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import (
    ChatRequest,
    Message,
    Role,
    SamplingParams,
    TextPart,
)
from mlx_server.domain.families import GEMMA3, GENERIC, QWEN3_VL
from mlx_server.domain.models import ModelRef

from ._common import rss_mb, smollm_dir, tiny_model

if TYPE_CHECKING:
    from mlx_server.domain.chat import ChatService


def catalog(tmp: Path) -> StaticCatalog:
    return StaticCatalog({
        "smollm": ModelRef("smollm", str(smollm_dir()), GENERIC.name),
        "gemma3": ModelRef("gemma3", str(tiny_model("gemma3", tmp / "g")), GEMMA3.name),
        "qwen3": ModelRef("qwen3", str(tiny_model("qwen3_vl", tmp / "q")), QWEN3_VL.name)})


async def ask(service: ChatService, model: str) -> None:
    await service.complete(ChatRequest(model=model, messages=(Message(Role.USER, (TextPart("Hi"),)),),
                                       sampling=SamplingParams(temperature=0.0, max_tokens=2)))


async def run(service: ChatService, cycle: list[str], swaps: int) -> None:
    first, order = cycle[0], [*cycle[1:], cycle[0]]
    before = rss_mb()
    await ask(service, first)
    loaded = rss_mb()
    for index in range(swaps):
        await ask(service, order[index % len(order)])
    await ask(service, first)
    after = rss_mb()
    print(f"RSS before any model: {before:8.1f} MB")
    print(f"RSS after first load: {loaded:8.1f} MB ({first})")
    print(f"RSS after {swaps} swaps:   {after:8.1f} MB ({first} again)")
    print(f"ratio after / first:  {after / loaded:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--order", default="smollm,gemma3,qwen3",
                        help="models to cycle through, first one loaded first (e.g. gemma3,qwen3)")
    args = parser.parse_args()
    service = build_service(Settings(), engine=MlxEngine(), catalog=catalog(Path(tempfile.mkdtemp())))
    asyncio.run(run(service, args.order.split(","), args.swaps))


if __name__ == "__main__":
    main()
