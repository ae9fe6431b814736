"""RSS after the first load and after N swaps (smollm -> tiny gemma3 -> tiny qwen3_vl -> smollm ...)
through the real engine and use case. Run: python -m bench.swaps [--swaps 10]"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build_service
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import ChatRequest, Message, Role, SamplingParams, TextPart
from mlx_server.domain.models import Family, ModelRef

from ._common import rss_mb, smollm_dir


def main() -> None:
    from tests.support.tiny_models import build_gemma3, build_qwen3_vl

    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--order", default="smollm,gemma3,qwen3",
                        help="models to cycle through, first one loaded first (e.g. gemma3,qwen3)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    catalog = StaticCatalog({
        "smollm": ModelRef("smollm", str(smollm_dir()), Family.GENERIC),
        "gemma3": ModelRef("gemma3", str(build_gemma3(tmp / "g")), Family.GEMMA3),
        "qwen3": ModelRef("qwen3", str(build_qwen3_vl(tmp / "q")), Family.QWEN3_VL)})
    service = build_service(Settings(), engine=MlxEngine(), catalog=catalog)
    cycle = args.order.split(",")
    first, order = cycle[0], [*cycle[1:], cycle[0]]

    async def ask(model: str) -> None:
        await service.complete(ChatRequest(model=model, messages=(Message(Role.USER, (TextPart("Hi"),)),),
                                           sampling=SamplingParams(temperature=0.0, max_tokens=2)))

    async def run() -> None:
        before = rss_mb()
        await ask(first)
        loaded = rss_mb()
        for index in range(args.swaps):
            await ask(order[index % len(order)])
        await ask(first)
        after = rss_mb()
        print(f"RSS before any model: {before:8.1f} MB")
        print(f"RSS after first load: {loaded:8.1f} MB ({first})")
        print(f"RSS after {args.swaps} swaps:   {after:8.1f} MB ({first} again)")
        print(f"ratio after / first:  {after / loaded:8.3f}")

    asyncio.run(run())


if __name__ == "__main__":
    main()
