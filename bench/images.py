"""Time to prepare a ~1 MB JPEG: decode + EXIF orientation + RGB through PillowImageLoader (data URI,
cache disabled), then the tiny models' mlx_vlm preprocessing (resize, normalise, image tokens).
Run: python -m bench.images [--runs 20] [--no-processor]"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from mlx_server.adapters.images.loader import PillowImageLoader

from ._common import TINY_FAMILIES, tiny_model

TARGET_BYTES = 1_000_000
T = TypeVar("T")


def photo_like_jpeg(width: int = 2000, height: int = 1500) -> bytes:
    """Smooth gradients plus sensor-like noise, quality picked to land near 1 MB, EXIF-rotated."""
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = [Image.effect_noise((width, height), sigma) for sigma in (40, 55, 70)]
    channels = [Image.blend(gradient, n, 0.5) for n in noise]
    image = Image.merge("RGB", channels)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate on load: the orientation step does real work
    best = b""
    for quality in range(95, 10, -5):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, exif=exif)
        best = buffer.getvalue()
        if len(best) <= TARGET_BYTES * 1.05:
            break
    return best


def median_ms(func: Callable[[], T], runs: int) -> tuple[float, T]:
    result = func()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def loader_ms(jpeg: bytes, runs: int) -> tuple[float, Image.Image]:
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    loader = PillowImageLoader(cache_size=0)

    def once() -> Image.Image:
        loaded = asyncio.run(loader.load(uri, param="bench"))
        assert isinstance(loaded.image, Image.Image)
        return loaded.image
    return median_ms(once, runs)


def processor_ms(family: str, image: Image.Image, runs: int) -> float:
    import mlx.core as mx
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load, prepare_inputs

    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load(str(tiny_model(family, Path(tmp) / family)))
    text = apply_chat_template(processor, model.config, "Describe the image.", num_images=1)

    def once() -> Any:
        inputs = prepare_inputs(  # type: ignore[no-untyped-call]
            processor, images=[image], prompts=text,
            image_token_index=getattr(model.config, "image_token_index", None))
        mx.eval(inputs["pixel_values"])
        return inputs
    ms, inputs = median_ms(once, runs)
    print(f"  {family}: mlx_vlm prepare_inputs  median {ms:7.1f} ms   pixel_values "
          f"{tuple(inputs['pixel_values'].shape)}, {inputs['input_ids'].shape[1]} prompt tokens")
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-processor", action="store_true", help="decode only, skip mlx_vlm")
    args = parser.parse_args()
    jpeg = photo_like_jpeg()
    with Image.open(io.BytesIO(jpeg)) as probe:
        stored = probe.size
    ms, image = loader_ms(jpeg, args.runs)
    print(f"JPEG {len(jpeg) / 1e6:.2f} MB, stored {stored[0]}x{stored[1]}, EXIF orientation 6; "
          f"median of {args.runs}")
    print(f"  loader (base64 + sha256 + decode + orientation + RGB): median {ms:7.1f} ms -> "
          f"{image.size[0]}x{image.size[1]} {image.mode}")
    if args.no_processor:
        return
    for family in TINY_FAMILIES:
        processor_ms(family, image, args.runs)


if __name__ == "__main__":
    main()
