"""Service configuration: every knob is a ``DRRN_*`` environment variable (e.g. ``DRRN_TILE=96``).

Settings are built inside :func:`service.app.create_app` (or :func:`service.main.serve`), never at import
time, so tests construct ``Settings(...)`` directly and several apps can coexist in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from drrn.errors import UserError
from drrn.paths import MODELS_DIR

if TYPE_CHECKING:
    from inference.image_limits import ImageLimits

MiB = 1024 * 1024


class Settings(BaseSettings):
    """All service settings; env prefix ``DRRN_``, case-insensitive; unknown ``DRRN_*`` vars are ignored."""

    model_config = SettingsConfigDict(env_prefix="DRRN_", extra="ignore", protected_namespaces=())

    # --- models and ONNX Runtime ------------------------------------------------------------------------
    model_dir: Path = Field(
        default=MODELS_DIR,
        description="Model repository: one folder per model (model.onnx, model.fp16.onnx, card.json); "
        "`make models` builds it from weights/*.safetensors.",
    )
    models: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated names of the models to serve; empty = every model in model_dir.",
    )
    default_model: str = Field(
        default="fast", description="The model a request without ?model= gets (fast on CPU, quality on GPU)."
    )
    providers: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Execution provider: auto = CUDA when onnxruntime offers it, else CPU. "
        "cuda fails at startup when CUDA is unavailable.",
    )
    cuda_device_id: int = Field(default=0, ge=0, description="CUDA device ordinal for the CUDA provider.")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        default="HEURISTIC",
        description="CUDA provider cuDNN conv algorithm search. EXHAUSTIVE benchmarks per shape "
        "(slow warmup, sometimes faster steady state); HEURISTIC is fast to warm up.",
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        default="auto",
        description="Which of a model's ONNX files to run: auto = fp16 on CUDA, and on the CPU the card's "
        "choice (int8 for a model whose int8 file measured >= 1.5x faster within 0.02 dB, else fp32). A "
        "precision a model was not built in falls back to fp32.",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ORT intra-op threads; 0 = ORT default.")
    inter_op_threads: int = Field(default=0, ge=0, description="ORT inter-op threads; 0 = ORT default.")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ORT graph optimisation level."
    )

    # --- tiling and batching ----------------------------------------------------------------------------
    tile: int | None = Field(
        default=None,
        ge=8,
        description="Tile size T for every model: a tile holds at most T*T pixels; "
        "empty = each model's card default.",
    )
    margin: int | None = Field(
        default=None,
        ge=0,
        description="Context pixels around each tile core for every model; empty = each model's card "
        "default (its depth: tiled output equals whole-image output). Must satisfy 2*margin < tile.",
    )
    tile_shapes: Literal["auto", "fit", "uniform"] = Field(
        default="auto",
        description="fit: each image's tiles take the shape that computes the fewest pixels (at most "
        "tile**2 each; thin and small images waste nothing). uniform: tile x tile wherever the image is at "
        "least tile on both axes, so tiles of different requests batch together. Both are exact. auto = "
        "uniform on CUDA, fit on the CPU.",
    )
    max_batch: int | None = Field(
        default=None,
        ge=1,
        description="Most tiles per engine run; empty = 8 on CUDA, 1 on the CPU (there a run costs its "
        "pixels whatever the batch, and a full batch is how long a small request waits behind a large one).",
    )
    max_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="How long a partial batch waits for more tiles after its first. Under load batches fill "
        "from the queue anyway; the wait only delays a lone request (0 measured best on CPU, BENCHMARKS.md).",
    )
    max_queue_tiles: int = Field(
        default=4096,
        ge=1,
        description="Bound on each model's queued tiles (per model: a quality-model backlog never refuses "
        "fast-model requests); a request that would exceed it gets 503 with Retry-After, one that alone "
        "exceeds it gets 413.",
    )
    max_inflight_requests: int = Field(
        default=64,
        ge=1,
        description="Admission bound on concurrently handled /upscale requests (bounds memory held by "
        "bodies and decoded images); beyond it requests get 503 with Retry-After.",
    )
    cpu_workers: int = Field(
        default=0,
        ge=0,
        description="Threads for decode/encode (CPU work off the event loop); 0 = min(4, CPU count).",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Per-request deadline from arrival; past it the request gets 504."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After seconds sent with 503 responses.")
    upload_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="Most seconds a request body may take to arrive, from the request's arrival (its own "
        "bound, inside request_timeout_s): a client that stalls or trickles its body gets 408. Bodies being "
        "received do not count against max_inflight_requests.",
    )
    max_uploads: int = Field(
        default=128,
        ge=1,
        description="Bound on request bodies being received at once (each holds up to max_upload_bytes); "
        "beyond it requests get 503 with Retry-After.",
    )
    deadline_admission: bool = Field(
        default=True,
        description="Refuse at admission, before any engine work, a request the measured engine speed "
        "cannot finish by its deadline: 413 if it never could, 503 with Retry-After if the work ahead (the "
        "queue, and the share recent traffic keeps taking) is the reason.",
    )
    engine_stall_s: float = Field(
        default=120.0,
        gt=0,
        description="Watchdog: one engine call running longer than this marks the process unhealthy "
        "(/healthz 503) so the orchestrator replaces it; the call's requests end at their deadline (504).",
    )
    # --- connections (uvicorn) --------------------------------------------------------------------------
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Most seconds a connection may take to send a request's headers (from connecting, or "
        "from its first byte after a keep-alive pause); then 408 and the connection closes.",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="Idle keep-alive connections are closed after this many seconds."
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="Largest request head (request line + headers); a bigger one gets 431 and a close.",
    )
    max_headers: int = Field(
        default=64, ge=8, description="Most header fields per request; more gets 431 and a close."
    )
    max_connections: int | None = Field(
        default=2048,
        ge=1,
        description="uvicorn limit_concurrency: beyond this many open connections (or running requests) "
        "new requests get a JSON 503 (`overloaded`) with Retry-After; empty = no limit.",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long admitted requests may take to finish (new ones get 503 at once); "
        "those still running then get 503. Set it >= request_timeout_s (a startup warning says when it is "
        "not). The process can take ceil(this) + 2 s to exit: keep the orchestrator's kill timeout above.",
    )

    shutdown_linger_s: float = Field(
        default=1.0,
        ge=0,
        description="After SIGTERM the listener stays open this long, answering new requests with 503 "
        "shutting_down, so that connections racing the close are answered instead of reset (lost). Adds "
        "to the exit time: keep the orchestrator's kill timeout above shutdown_grace_s + this + 2 s.",
    )

    # --- input limits -----------------------------------------------------------------------------------
    max_upload_bytes: int = Field(default=20 * MiB, ge=1, description="Largest accepted image upload.")
    max_input_pixels: int = Field(default=16_000_000, ge=1, description="Largest decoded input (w*h).")
    max_output_pixels: int = Field(default=16_000_000, ge=1, description="Largest output (w*h) after scale.")
    max_scale: float = Field(default=4.0, gt=1, description="Largest accepted scale factor.")
    max_ensemble_output_pixels: int = Field(
        default=4_000_000,
        ge=1,
        description="Largest output (w*h) for ?ensemble=8 (8x the engine work of a plain request).",
    )

    # --- API keys (off unless api_keys_file is set) ------------------------------------------------------
    api_keys_file: Path | None = Field(
        default=None,
        description="File of salted API-key hashes (`drrn keys add NAME --file PATH` writes it; mount it as "
        "a secret). Set: every request needs `Authorization: Bearer <key>` (else 401) except /healthz, "
        "/readyz, /metrics, the page and the API docs. Re-read when it changes. Empty = no keys required.",
    )
    api_key_max_inflight: int = Field(
        default=16,
        ge=1,
        description="Most requests one API key may have in flight; beyond it 429 with Retry-After.",
    )
    metrics_require_key: bool = Field(
        default=False, description="With api_keys_file: /metrics needs a key too (else scrapes stay open)."
    )

    # --- logging ----------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Root log level (JSON lines on stderr)."
    )

    @field_validator("tile", "margin", "models", "max_connections", "api_keys_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # DRRN_MARGIN="" means the card default; DRRN_MODELS="" means every model.
        return None if value in ("", "none", "None") else value

    @field_validator("models", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # pydantic-settings would parse a list from JSON only; operators write DRRN_MODELS=fast,quality.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()] or None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_margin(self) -> Settings:
        if self.margin is not None and self.tile is not None and 2 * self.margin >= self.tile:
            raise ValueError(
                f"margin {self.margin} leaves no core in tile {self.tile}: need 2*margin < tile "
                f"(raise DRRN_TILE or lower DRRN_MARGIN)"
            )
        return self

    def image_limits(self) -> ImageLimits:
        """The pipeline's :class:`~inference.pipeline.ImageLimits` built from these settings."""
        from inference.image_limits import ImageLimits

        return ImageLimits(
            max_upload_bytes=self.max_upload_bytes,
            max_input_pixels=self.max_input_pixels,
            max_output_pixels=self.max_output_pixels,
            max_scale=self.max_scale,
            max_ensemble_output_pixels=self.max_ensemble_output_pixels,
        )

    def limits_dict(self) -> dict[str, float | int]:
        """Every request limit by name (served by ``/v1/model``)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_input_pixels": self.max_input_pixels,
            "max_output_pixels": self.max_output_pixels,
            "max_scale": self.max_scale,
            "max_ensemble_output_pixels": self.max_ensemble_output_pixels,
            "max_queue_tiles": self.max_queue_tiles,
            "max_inflight_requests": self.max_inflight_requests,
            "request_timeout_s": self.request_timeout_s,
        }


def settings_from_env() -> Settings:
    """:class:`Settings` from the environment; a bad ``DRRN_*`` value is a one-line ``UserError`` that
    names it, for the CLI to print (``drrn serve``, ``drrn upscale``), instead of a traceback."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError
        raise UserError(f"invalid DRRN_* setting: {exc}".replace("\n", " ")) from exc
