"""The composition root: builds every adapter from Settings and wires them into the app."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Literal, cast

from ..adapters.fake_engine import FakeEngine, load_replies
from ..adapters.http.app import HttpOptions, create_app
from ..adapters.http.disconnect import DisconnectWatch
from ..adapters.http.perimeter import allowed_hosts_for
from ..adapters.metrics import PrometheusMetrics
from ..adapters.store.catalog import StaticCatalog
from ..adapters.system import RandomIds, SystemClock
from ..domain.chat import ChatLimits, ChatService, generation_worker
from ..domain.lifecycle import StartupPolicy
from ..domain.ports import (
    Clock,
    IdSource,
    ImageLoader,
    InferenceEngine,
    Metrics,
    ModelCatalog,
    NoMetrics,
)
from ..domain.worker import GenerationWorker, QueuePolicy
from .config import Settings

log = logging.getLogger(__name__)
# rows decoding together unless configured, as measured (`python -m bench.concurrency`,
# bench/RESULTS.md): aggregate decode still grows from 4 to 8 rows on the CPU (SmolLM2: 3.1x to
# 4.6x one stream) and on an H200; per-stream speed and time to first token pay for it
DEFAULT_MAX_BATCH = 8


def spec_text() -> str:
    return (resources.files("mlx_server") / "openapi.yaml").read_text(encoding="utf-8")


def build_engine(settings: Settings) -> InferenceEngine:
    if settings.engine == "fake":
        replies = load_replies(settings.fake_replies) if settings.fake_replies else ()
        thinking = cast(Literal["none", "hybrid", "forced"], settings.fake_thinking)  # a choice
        return FakeEngine(replies, delay=settings.fake_delay, thinking=thinking)
    import mlx.core as mx

    from ..adapters.mlx.engine import MlxEngine

    warm: tuple[int, ...] = ()  # a load warms up the batch sizes the scheduler will use, on a GPU
    if mx.default_device().type == mx.gpu:
        largest = settings.max_batch or DEFAULT_MAX_BATCH
        warm = (*(size for size in (1, 2, 4, 8, 16, 32, 64, 128) if size < largest), largest)
    return MlxEngine(cpu_weights=settings.cpu_weights, prefix_cache=settings.prefix_cache,
                     prefix_cache_mb=settings.prefix_cache_mb,
                     prefill_chunk=settings.prefill_chunk, warm_batches=warm)


def build_catalog(settings: Settings) -> ModelCatalog:
    """The fake engine serves the fixed aliases; the real one, the Hugging Face cache and hub."""
    if settings.engine == "fake":
        return StaticCatalog()
    from ..adapters.store.hf_store import HuggingFaceStore

    # local paths are opt-in: those named on the command line and the models dirs' entries
    named = [name for name in (settings.model, settings.fallback_model) if name]
    return HuggingFaceStore(settings.cache_dir, local_models=named, models_dirs=settings.models_dirs)


def build_images(settings: Settings) -> ImageLoader:
    from ..adapters.images.loader import ImagePolicy, PillowImageLoader

    return PillowImageLoader(ImagePolicy(max_bytes=settings.max_image_bytes,
                                         allow_private=settings.allow_private_image_urls))


def build_worker(settings: Settings, engine: InferenceEngine, metrics: Metrics) -> GenerationWorker:
    return generation_worker(
        engine, metrics, QueuePolicy(settings.max_queue, settings.queue_timeout, settings.swap_batch,
                                     max_batch=settings.max_batch or DEFAULT_MAX_BATCH))


def build_service(settings: Settings, *, engine: InferenceEngine | None = None,
                  catalog: ModelCatalog | None = None, clock: Clock | None = None,
                  ids: IdSource | None = None, images: ImageLoader | None = None,
                  metrics: Metrics | None = None) -> ChatService:
    engine = engine or build_engine(settings)
    metrics = metrics or NoMetrics()
    return ChatService(catalog=catalog or build_catalog(settings), engine=engine,
                       clock=clock or SystemClock(), ids=ids or RandomIds(),
                       images=images or build_images(settings),
                       worker=build_worker(settings, engine, metrics), metrics=metrics,
                       limits=ChatLimits(settings.max_tokens_cap, settings.max_images),
                       startup=StartupPolicy(settings.model, settings.fallback_model,
                                             settings.idle_unload))


def build(settings: Settings, *, engine: InferenceEngine | None = None,
          catalog: ModelCatalog | None = None, clock: Clock | None = None,
          ids: IdSource | None = None, metrics: PrometheusMetrics | None = None) -> DisconnectWatch:
    """Build the ASGI app. Pass adapters to replace the real ones (tests, embedding)."""
    catalog = catalog or build_catalog(settings)
    metrics = metrics or PrometheusMetrics()
    service = build_service(settings, engine=engine, catalog=catalog, clock=clock, ids=ids,
                            metrics=metrics)
    metrics.watch_loaded_model(service.loaded_id)
    backend = backend_of(service.engine)
    log.info("backend: %s", ", ".join(f"{key}={value}" for key, value in backend().items()))
    options = HttpOptions(max_body_bytes=settings.max_body_bytes, api_key=settings.api_key,
                          metrics_auth=settings.metrics_auth, cors_origins=settings.cors_origins,
                          allowed_hosts=allowed_hosts_for(settings.host, settings.allowed_hosts),
                          body_timeout=settings.body_timeout,
                          responses_max_count=settings.responses_max_count,
                          responses_max_bytes=settings.responses_max_bytes)
    if settings.metrics_auth and not settings.api_key:
        log.warning("--metrics-auth has no effect without --api-key: /metrics stays open")
    return create_app(service, spec_text(), options, backend=backend, metrics=metrics)


def backend_of(engine: InferenceEngine) -> Callable[[], Mapping[str, str]]:
    """What serves inference, as /health reports it: device, BLAS, how weights are held."""
    from ..adapters.mlx.engine import MlxEngine

    if not isinstance(engine, MlxEngine):
        return lambda: {"engine": type(engine).__name__}
    from .process import backend_report

    report = {"engine": "mlx", **backend_report()}  # checked once: it cannot change later
    return lambda: {**report, "weights": engine.weights}
