"""RSS after the first load and after N swaps (smollm -> tiny gemma3 -> tiny qwen3_vl -> smollm ...)
through the real engine and use case. Run: python -m bench.swaps [--swaps 10]"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from mlx_server.adapters.catalog import StaticCatalog
from mlx_server.adapters.mlx_engine import MlxEngine
from mlx_server.app.bootstrap import build_service
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import ChatRequest, Message, Role, SamplingParams, TextPart
from mlx_server.domain.models import Family, ModelRef

from ._common import rss_mb, smollm_dir


def main() -> None:
    from tests.support.tiny_models import build_gemma3, build_qwen3_vl

    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=10)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    catalog = StaticCatalog({
        "smollm": ModelRef("smollm", str(smollm_dir()), Family.GENERIC),
        "gemma3": ModelRef("gemma3", str(build_gemma3(tmp / "g")), Family.GEMMA3),
        "qwen3": ModelRef("qwen3", str(build_qwen3_vl(tmp / "q")), Family.QWEN3_VL)})
    service = build_service(Settings(), engine=MlxEngine(), catalog=catalog)
    order = ["gemma3", "qwen3", "smollm"]

    async def ask(model: str) -> None:
        await service.complete(ChatRequest(model=model, messages=(Message(Role.USER, (TextPart("Hi"),)),),
                                           sampling=SamplingParams(temperature=0.0, max_tokens=2)))

    async def run() -> None:
        before = rss_mb()
        await ask("smollm")
        first = rss_mb()
        for index in range(args.swaps):
            await ask(order[index % len(order)])
        await ask("smollm")
        after = rss_mb()
        print(f"RSS before any model: {before:8.1f} MB")
        print(f"RSS after first load: {first:8.1f} MB (smollm)")
        print(f"RSS after {args.swaps} swaps:   {after:8.1f} MB (smollm again)")
        print(f"ratio after / first:  {after / first:8.3f}")

    asyncio.run(run())


if __name__ == "__main__":
    main()
