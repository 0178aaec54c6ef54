"""Prometheus metrics of one service instance, in its own registry (so apps in one process don't collide).

:data:`METRICS` is the single list of exported metric families (name as queried in PromQL, type); the
Grafana dashboard test checks every dashboard query against :func:`series_names`. Every family whose value
differs by model carries a ``model`` label (the served model's name; ``""`` for requests refused before a
known model was chosen, so a client cannot mint label values).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from inference.upscaler_types import Phase, UpscalerObserver

METRICS: tuple[tuple[str, str], ...] = (
    ("drrn_request_duration_seconds", "histogram"),
    ("drrn_decode_seconds", "histogram"),
    ("drrn_queue_wait_seconds", "histogram"),
    ("drrn_inference_batch_seconds", "histogram"),
    ("drrn_encode_seconds", "histogram"),
    ("drrn_batch_size_tiles", "histogram"),
    ("drrn_batch_requests", "histogram"),
    ("drrn_request_tiles", "histogram"),
    ("drrn_input_megapixels", "histogram"),
    ("drrn_queue_depth_tiles", "gauge"),
    ("drrn_queued_engine_seconds", "gauge"),
    ("drrn_inflight_requests", "gauge"),
    ("drrn_uploading_requests", "gauge"),
    ("drrn_deadline_engine_seconds", "counter"),
    ("drrn_ready", "gauge"),
    ("drrn_rejections_total", "counter"),
    ("drrn_errors_total", "counter"),
    ("drrn_model_info", "info"),
)
METRIC_NAMES: tuple[str, ...] = tuple(name for name, _ in METRICS)
REJECTION_REASONS = (
    "bad_input",
    "too_large",
    "queue_full",
    "overloaded",
    "deadline",
    "too_slow",
    "backlog",
    "upload_timeout",
    "shutting_down",
    "not_ready",
    "cancelled",
    "client_disconnected",
    "unauthorized",  # API keys (service.auth): a missing or wrong key
    "quota",  # API keys: the key's requests in flight at api_key_max_inflight
)
ERROR_KINDS = ("engine", "internal", "warmup", "worker", "engine_stall")
# Sample names per family type, from the name without its type suffix (prometheus_client adds ``_created``).
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
_TYPE_SUFFIX = {"counter": "_total", "info": "_info"}

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MEGAPIXEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
TILE_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def series_names() -> frozenset[str]:
    """Every sample name a scrape can contain, e.g. ``drrn_request_duration_seconds_bucket``."""
    return frozenset(
        name.removesuffix(_TYPE_SUFFIX.get(kind, "")) + sfx
        for name, kind in METRICS
        for sfx in _SUFFIXES[kind]
    )


class ServiceMetrics(UpscalerObserver):
    """All service metrics; also the Upscaler's and batcher's observer (stages, runs, queue, rejections)."""

    def __init__(self, max_batch: int) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        per_run = tuple(range(1, max_batch + 1))  # exact counts: one bucket per possible batch size
        self.request_duration = Histogram(
            "drrn_request_duration_seconds",
            "HTTP request latency by route template and status code.",
            ["route", "status", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            "drrn_decode_seconds",
            "Decode + bicubic + tiling time per request (on a CPU thread, not counting the wait for one).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "drrn_queue_wait_seconds",
            "Time from batcher submit until the request's first tile started running (recorded when it "
            "does, also for requests that later fail or time out).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_batch = Histogram(
            "drrn_inference_batch_seconds",
            "Engine time per run (one batch).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode = Histogram(
            "drrn_encode_seconds",
            "Stitch + colour recombine + PNG encode time (on a CPU thread, not counting the wait for one).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "drrn_batch_size_tiles", "Tiles per engine run.", ["model"], buckets=per_run, registry=r
        )
        self.batch_requests = Histogram(
            "drrn_batch_requests",
            "Distinct requests whose tiles shared one engine run.",
            ["model"],
            buckets=per_run,
            registry=r,
        )
        self.request_tiles = Histogram(
            "drrn_request_tiles", "Tiles per request.", ["model"], buckets=TILE_COUNT_BUCKETS, registry=r
        )
        self.input_megapixels = Histogram(
            "drrn_input_megapixels",
            "Decoded input size per request.",
            ["model"],
            buckets=MEGAPIXEL_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "drrn_queue_depth_tiles", "Tiles waiting for an engine run.", ["model"], registry=r
        )
        self.queued_work = Gauge(
            "drrn_queued_engine_seconds",
            "Estimated engine seconds of the tiles waiting (measured seconds per tile; the HPA signal).",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge(
            "drrn_inflight_requests", "Upscale requests being handled (body received).", registry=r
        )
        self.uploading = Gauge(
            "drrn_uploading_requests", "Admitted upscale requests whose body is still arriving.", registry=r
        )
        self.deadline_engine = Counter(
            "drrn_deadline_engine_seconds",
            "Engine seconds spent on tiles of requests that then ended past their deadline (504): "
            "compute thrown away (each run's time shared by its tiles).",
            ["model"],
            registry=r,
        )
        self.ready = Gauge(
            "drrn_ready", "1 when the service is ready (model warm, batcher running).", registry=r
        )
        self.rejections = Counter(
            "drrn_rejections_total",
            "Requests refused or abandoned, by reason.",
            ["reason", "model"],
            registry=r,
        )
        self.errors = Counter("drrn_errors_total", "Server-side failures, by kind.", ["kind"], registry=r)
        self.model = Info("drrn_model", "One sample per served model.", ["model"], registry=r)
        self.models: list[str] = []  # the served models' names: the only values of the model label
        for reason in REJECTION_REASONS:  # zero-initialised, so rate() works from the first scrape
            self.rejections.labels(reason=reason, model="")
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)

    def add_model(self, model: str, info: dict[str, Any]) -> None:
        """A served model: publish ``drrn_model_info{model=...}`` and zero-initialise its series."""
        self.models.append(model)
        keys = ("name", "provider", "precision", "tile", "margin", "max_batch", "default")
        self.model.labels(model=model).info({k: str(info.get(k, "")) for k in keys})
        self.queue_depth.labels(model=model)
        self.queued_work.labels(model=model)
        self.deadline_engine.labels(model=model)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason, model=model)

    def label(self, model: str | None) -> str:
        """``model`` if it is served, else ``""`` (bounded label values)."""
        return model if model in self.models else ""

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)

    # --- UpscalerObserver (and the batcher's hooks) -----------------------------------------------------
    def on_batch(self, model: str, size: int, requests: int, seconds: float) -> None:
        self.batch_size.labels(model=model).observe(size)
        self.batch_requests.labels(model=model).observe(requests)
        self.inference_batch.labels(model=model).observe(seconds)

    def on_queue_depth(self, model: str, tiles: int) -> None:
        self.queue_depth.labels(model=model).set(tiles)

    def on_queued_work(self, model: str, seconds: float) -> None:
        self.queued_work.labels(model=model).set(seconds)

    def on_reject(self, model: str, reason: str) -> None:
        self.rejections.labels(reason=reason, model=self.label(model)).inc()

    def on_first_dispatch(self, model: str, queue_wait_s: float) -> None:
        self.queue_wait.labels(model=model).observe(queue_wait_s)

    def on_engine_error(self, model: str, exc: BaseException) -> None:
        self.errors.labels(kind="engine").inc()

    def on_worker_crash(self, exc: BaseException) -> None:
        self.errors.labels(kind="worker").inc()
        self.ready.set(0)

    def on_prepared(self, model: str, seconds: float, input_megapixels: float, tiles: int) -> None:
        self.decode.labels(model=model).observe(seconds)
        self.input_megapixels.labels(model=model).observe(input_megapixels)
        self.request_tiles.labels(model=model).observe(tiles)

    def on_encoded(self, model: str, seconds: float) -> None:
        self.encode.labels(model=model).observe(seconds)

    def on_inflight(self, requests: int) -> None:
        self.inflight.set(requests)

    def on_uploading(self, requests: int) -> None:
        self.uploading.set(requests)

    def on_deadline_work(self, model: str, seconds: float) -> None:
        self.deadline_engine.labels(model=model).inc(seconds)

    def on_engine_stall(self, model: str, seconds: float) -> None:
        self.errors.labels(kind="engine_stall").inc()
        self.ready.set(0)

    def on_phase(self, phase: Phase) -> None:
        self.ready.set(1 if phase is Phase.READY else 0)
        if phase is Phase.FAILED:
            self.errors.labels(kind="warmup").inc()
