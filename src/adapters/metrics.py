"""Prometheus metrics: implements the `Metrics` port and records HTTP traffic.

Everything lives on the instance's own CollectorRegistry, never the global one, so tests and several
apps in one process do not clash. One worker per process holds the model, so no multiprocess mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..domain.ports import StepReport

_FAST = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SWAPS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 32)
_STEPS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_PREFILL = (0, 16, 64, 128, 256, 512, 1024, 2048, 4096)
_RATES = (1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0, 200.0, 500.0)

LoadedModel = Callable[[], str | None]


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

class _LoadedModelCollector(Collector):
    """`mlx_server_loaded_model{model="..."} 1`, read at scrape time (absent when none is loaded)."""

    def __init__(self) -> None:
        self.source: LoadedModel = lambda: None

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("mlx_server_loaded_model", "The model in memory (value 1).",
                                   labels=["model"])
        model = self.source()
        if model:
            family.add_metric([model], 1.0)
        yield family


class PrometheusMetrics:
    """The `Metrics` port on prometheus-client, plus per-route HTTP metrics for the middleware."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._prompt = Counter("mlx_server_prompt_tokens", "Prompt tokens processed.", ["model"],
                               registry=r)
        self._cached = Counter("mlx_server_cached_tokens",
                               "Prompt tokens served from the prefix cache (cache hits).",
                               ["model"], registry=r)
        self._completion = Counter("mlx_server_completion_tokens", "Tokens generated.", ["model"],
                                   registry=r)
        self._decode = Counter("mlx_server_decode_seconds",
                               "Seconds spent decoding (completion tokens / this = tokens/s).",
                               ["model"], registry=r)
        self._rate = Histogram("mlx_server_generation_tokens_per_second",
                               "Decode speed of each finished generation.", ["model"],
                               buckets=_RATES, registry=r)
        self._ttft = Histogram("mlx_server_time_to_first_token_seconds",
                               "From generation start (after queueing and loading) to the first "
                               "token.", ["model"], buckets=_FAST, registry=r)
        self._generations = Counter("mlx_server_generations", "Finished generations.", ["model"],
                                    registry=r)
        self._swaps = Counter("mlx_server_model_swaps", "Models loaded.", ["model"], registry=r)
        self._swap_seconds = Histogram("mlx_server_model_swap_seconds", "Time to load a model.",
                                       ["model"], buckets=_SWAPS, registry=r)
        self._cancelled = Counter("mlx_server_cancellations",
                                  "Requests stopped because the client went away, by phase: "
                                  "queued, prefill or decode.", ["model", "phase"],
                                  registry=r)
        self._queue = Gauge("mlx_server_queue_depth", "Requests waiting for the model.",
                            registry=r)
        self._active = Gauge("mlx_server_active_sequences",
                             "Sequences in the running batch (prefilling or decoding).",
                             registry=r)
        self._batch = Histogram("mlx_server_batch_size", "Rows decoded together, per step.",
                                buckets=_BATCH, registry=r)
        self._step = Histogram("mlx_server_step_seconds", "Wall time of one engine step.",
                               buckets=_STEPS, registry=r)
        self._prefill_step = Histogram("mlx_server_prefill_tokens_per_step",
                                       "Prompt tokens prefilled in one engine step.",
                                       buckets=_PREFILL, registry=r)
        self._requests = Counter("mlx_server_http_requests", "HTTP requests by route and status.",
                                 ["method", "route", "status"], registry=r)
        self._latency = Histogram("mlx_server_http_request_duration_seconds",
                                  "HTTP request latency, to the last byte (streams included).",
                                  ["method", "route"], buckets=_FAST, registry=r)
        self._loaded = _LoadedModelCollector()
        r.register(self._loaded)

    # -- the Metrics port -------------------------------------------------------------------------

    def generation(self, model: str, *, prompt_tokens: int, cached_tokens: int,
                   completion_tokens: int, ttft: float, decode_seconds: float) -> None:
        self._generations.labels(model).inc()
        self._prompt.labels(model).inc(prompt_tokens)
        self._cached.labels(model).inc(cached_tokens)
        self._completion.labels(model).inc(completion_tokens)
        self._decode.labels(model).inc(max(decode_seconds, 0.0))
        self._ttft.labels(model).observe(max(ttft, 0.0))
        if decode_seconds > 0 and completion_tokens > 1:
            # the first token came with the prefill: decode time covers the others
            self._rate.labels(model).observe((completion_tokens - 1) / decode_seconds)

    def swap(self, model: str, seconds: float) -> None:
        self._swaps.labels(model).inc()
        self._swap_seconds.labels(model).observe(max(seconds, 0.0))

    def cancelled(self, model: str, phase: str) -> None:
        self._cancelled.labels(model, phase).inc()

    def queue_depth(self, waiting: int) -> None:
        self._queue.set(waiting)

    def step(self, rows: int, report: StepReport) -> None:
        self._active.set(rows)
        if report.decoded:
            self._batch.observe(report.decoded)
        self._step.observe(max(report.seconds, 0.0))
        self._prefill_step.observe(report.prefill_tokens)

    # -- the HTTP side ----------------------------------------------------------------------------

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # a client chooses the method name: any other is "other", or each new name would add
        # series to every scrape for good (a label-cardinality flood, without a key)
        method = method if method in HTTP_METHODS else "other"
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route).observe(max(seconds, 0.0))

    def watch_loaded_model(self, source: LoadedModel) -> None:
        """Report the loaded model from `source`, called at each scrape."""
        self._loaded.source = source

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)
