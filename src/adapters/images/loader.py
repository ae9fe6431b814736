"""The `ImageLoader` adapter: data: URIs and http(s) URLs to decoded, oriented RGB Pillow images.

data: URIs: `data:[<media type>][;<param>]*;base64,<payload>`. The media type is optional and not
trusted (Pillow judges the format from the bytes, as for URLs); `;base64` is required. Whitespace in
the payload (line-wrapped base64) is ignored, missing `=` padding is tolerated and the URL-safe
alphabet (`-_`) is accepted; any other character is `invalid_image`.

Decoding accepts PNG, JPEG, WebP and GIF (the first frame of animations), checks the pixel count
from the header before decoding anything, applies EXIF orientation and composites transparency
onto white. It runs in a worker thread; decoded images are kept in a per-loader LRU keyed by the
sha256 of the bytes, bounded in entries and in decoded bytes (a few large images must not pin
hundreds of MB), and concurrent loads of the same bytes share one decode. Cached images are
shared: callers must not mutate them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
from collections import OrderedDict

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from ...domain.errors import InvalidImage, InvalidImageUrl
from ...domain.ports import LoadedImage
from .fetch import AddressCheck, Fetcher, ImagePolicy, Resolver, is_public_address

__all__ = ["ImagePolicy", "PillowImageLoader", "decode_image", "is_public_address", "parse_data_uri"]

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Qwen-VL processors (smart_resize) refuse a ratio of 200 or more; no model learns from such a strip
MAX_ASPECT = 200
_URLSAFE = str.maketrans("-_", "+/")
DEFAULT_POLICY = ImagePolicy()
CACHE_BYTES = 128 * 2**20  # decoded pixels kept for the next turn: ~10 images of 1920x1080


def parse_data_uri(url: str, *, param: str, max_bytes: int) -> bytes:
    """The bytes of a base64 `data:` URI. InvalidImageUrl for a malformed or oversized URI,
    InvalidImage for a payload that is not base64."""
    head, comma, payload = url.partition(",")
    if not head[:5].lower() == "data:" or not comma:
        raise InvalidImageUrl("a data: URI needs the form data:image/png;base64,<data>", param=param)
    if "base64" not in (part.strip().lower() for part in head[5:].split(";")[1:]):
        raise InvalidImageUrl("only base64 data: URIs are accepted (data:image/png;base64,...)",
                              param=param)
    text = "".join(payload.split()).translate(_URLSAFE)
    if len(text) // 4 * 3 > max_bytes:
        raise InvalidImageUrl(f"the image is larger than the {max_bytes} byte limit", param=param)
    if len(text) % 4 == 1:
        raise InvalidImage("the data: URI's base64 payload has an impossible length", param=param)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("the data: URI's payload is not valid base64", param=param) from None


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode `data` into an RGB image, upright per EXIF. Raises only InvalidImage (without param)."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    try:
        return _decode(data, max_pixels)
    except InvalidImage:
        raise
    except Image.DecompressionBombError:
        raise _too_many_pixels(max_pixels) from None
    except UnidentifiedImageError:
        raise InvalidImage("the data is not a PNG, JPEG, WebP or GIF image") from None
    except Exception as exc:
        reason = "truncated" if "truncated" in str(exc) else _short(exc)
        raise InvalidImage(f"the image could not be decoded ({reason})") from None


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        width, height = image.size  # from the header; nothing decoded yet
        if width <= 0 or height <= 0:
            raise InvalidImage(f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise _too_many_pixels(max_pixels, width, height)
        if max(width, height) >= MAX_ASPECT * min(width, height):
            raise InvalidImage(f"the image is {width}x{height} pixels: its long side must be less "
                               f"than {MAX_ASPECT} times its short side")
        image.load()  # the first frame of an animation
        ImageOps.exif_transpose(image, in_place=True)  # in place: no full copy when upright
        return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _too_many_pixels(max_pixels: int, width: int = 0, height: int = 0) -> InvalidImage:
    size = f" ({width}x{height})" if width else ""
    return InvalidImage(f"the image has too many pixels{size}; the limit is {max_pixels}")


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return text or type(exc).__name__


def decoded_bytes(image: Image.Image) -> int:
    """The memory a decoded image holds: Pillow stores an RGB pixel in 4 bytes (RGBX)."""
    return image.width * image.height * max(4, len(image.getbands()))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PillowImageLoader:
    """Implements the `ImageLoader` port. Raises only InvalidImage / InvalidImageUrl, naming
    `param`. `resolver`, `transport` and `is_allowed_address` are injection points for tests.
    The cache keeps at most `cache_size` images and `cache_bytes` of decoded pixels, least
    recently used out first; an image larger than `cache_bytes` alone is not kept."""

    def __init__(self, policy: ImagePolicy = DEFAULT_POLICY, *, resolver: Resolver | None = None,
                 cache_size: int = 64, cache_bytes: int = CACHE_BYTES,
                 transport: httpx.AsyncBaseTransport | None = None,
                 is_allowed_address: AddressCheck | None = None) -> None:
        self._policy = policy
        self._fetcher = Fetcher(policy, resolver, transport, is_allowed_address)
        self._cache: OrderedDict[str, tuple[LoadedImage, int]] = OrderedDict()  # key: (image, bytes)
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self.cached_bytes = 0  # decoded bytes held by the cache now
        self._inflight: dict[str, asyncio.Task[LoadedImage]] = {}
        self.decode_count = 0  # decodes started; cache hits and shared decodes don't count

    async def load(self, url: str, *, param: str) -> LoadedImage:
        try:
            data, key = await self._bytes(url, param)
            return await self._prepared(data, key, param)
        except (InvalidImage, InvalidImageUrl):
            raise
        except Exception:
            raise InvalidImage("the image could not be loaded", param=param) from None

    async def _bytes(self, url: str, param: str) -> tuple[bytes, str]:
        if not isinstance(url, str):
            raise InvalidImageUrl("the image URL must be a string", param=param)
        url = url.strip()
        if url[:5].lower() == "data:":
            max_bytes = self._policy.max_bytes
            data = await asyncio.to_thread(parse_data_uri, url, param=param, max_bytes=max_bytes)
        else:
            data = await self._fetcher.fetch(url, param=param)
        return data, await asyncio.to_thread(_digest, data)

    async def _prepared(self, data: bytes, key: str, param: str) -> LoadedImage:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached[0]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._decode(data, key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        try:
            return await asyncio.shield(task)  # a cancelled caller leaves the decode to the others
        except InvalidImage as exc:
            raise InvalidImage(exc.message, param=param) from None

    async def _decode(self, data: bytes, key: str) -> LoadedImage:
        self.decode_count += 1
        image = await asyncio.to_thread(decode_image, data, max_pixels=self._policy.max_pixels)
        loaded = LoadedImage(key=key, image=image)
        self._keep(loaded, decoded_bytes(image))
        return loaded

    def _keep(self, loaded: LoadedImage, size: int) -> None:
        """Cache `loaded`, then evict the least recently used until both bounds hold."""
        if self._cache_size <= 0 or size > self._cache_bytes or loaded.key in self._cache:
            return
        self._cache[loaded.key] = (loaded, size)
        self.cached_bytes += size
        while len(self._cache) > self._cache_size or self.cached_bytes > self._cache_bytes:
            _, (_, dropped) = self._cache.popitem(last=False)
            self.cached_bytes -= dropped

    @property
    def cached_keys(self) -> list[str]:
        """The cached images' keys, least recently used first."""
        return list(self._cache)

    def _settled(self, key: str, task: asyncio.Task[LoadedImage]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when every caller left
