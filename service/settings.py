"""Service configuration: every knob is a ``DRRN_*`` environment variable (e.g. ``DRRN_TILE=96``).

Settings are built inside :func:`service.app.create_app` (or :func:`service.main.serve`), never at import
time, so tests construct ``Settings(...)`` directly and several apps can coexist in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from drrn.paths import ARTIFACTS

if TYPE_CHECKING:
    from inference.pipeline import ImageLimits

MiB = 1024 * 1024


class Settings(BaseSettings):
    """All service settings; env prefix ``DRRN_``, case-insensitive; unknown ``DRRN_*`` vars are ignored."""

    model_config = SettingsConfigDict(env_prefix="DRRN_", extra="ignore", protected_namespaces=())

    # --- model and ONNX Runtime -------------------------------------------------------------------------
    model_path: Path = Field(
        default=ARTIFACTS / "default.onnx",
        description="fp32 ONNX model (build it with `make default-onnx`).",
    )
    fp16_model_path: Path | None = Field(
        default=ARTIFACTS / "default.fp16.onnx",
        description="fp16 ONNX model used instead of model_path on CUDA when the file exists; "
        "empty/None disables fp16 selection.",
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
    intra_op_threads: int = Field(default=0, ge=0, description="ORT intra-op threads; 0 = ORT default.")
    inter_op_threads: int = Field(default=0, ge=0, description="ORT inter-op threads; 0 = ORT default.")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ORT graph optimisation level."
    )

    # --- tiling and batching ----------------------------------------------------------------------------
    tile: int = Field(default=128, ge=8, description="Tile side T in pixels; the engine only sees TxT.")
    margin: int | None = Field(
        default=None,
        ge=0,
        description="Context pixels around each tile core; None = model depth (drrn.depth metadata), "
        "which makes tiled output equal whole-image output. Must satisfy 2*margin < tile.",
    )
    max_batch: int = Field(default=8, ge=1, description="Most tiles per engine run.")
    max_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="How long a partial batch waits for more tiles after its first. Under load batches fill "
        "from the queue anyway; the wait only delays a lone request (0 measured best on CPU, BENCHMARKS.md).",
    )
    max_queue_tiles: int = Field(
        default=4096,
        ge=1,
        description="Bound on queued tiles from all requests; a request that would exceed it gets 503 "
        "with Retry-After, one that alone exceeds it gets 413.",
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
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long admitted requests may take to finish (new ones get 503 at once); "
        "those still running then get 503. Set it >= request_timeout_s (a startup warning says when it is "
        "not). The process can take ceil(this) + 2 s to exit: keep the orchestrator's kill timeout above.",
    )

    # --- input limits -----------------------------------------------------------------------------------
    max_upload_bytes: int = Field(default=20 * MiB, ge=1, description="Largest accepted image upload.")
    max_input_pixels: int = Field(default=16_000_000, ge=1, description="Largest decoded input (w*h).")
    max_output_pixels: int = Field(default=16_000_000, ge=1, description="Largest output (w*h) after scale.")
    max_scale: float = Field(default=4.0, gt=1, description="Largest accepted scale factor.")

    # --- logging ----------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Root log level (JSON lines on stderr)."
    )

    @field_validator("fp16_model_path", "margin", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # DRRN_FP16_MODEL_PATH="" means no fp16 model (not Path("") == cwd); DRRN_MARGIN="" means depth.
        return None if value in ("", "none", "None") else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_margin(self) -> Settings:
        if self.margin is not None:
            self.check_margin(self.margin)
        return self

    def check_margin(self, margin: int) -> int:
        """Return ``margin`` if ``2 * margin < tile`` (so each tile has a non-empty core), else raise."""
        if 2 * margin >= self.tile:
            raise ValueError(
                f"margin {margin} leaves no core in tile {self.tile}: need 2*margin < tile "
                f"(raise DRRN_TILE or lower DRRN_MARGIN)"
            )
        return margin

    def resolve_margin(self, depth: int) -> int:
        """The margin to tile with: the configured one, else the model's depth (validated)."""
        return self.check_margin(self.margin if self.margin is not None else depth)

    def image_limits(self) -> ImageLimits:
        """The pipeline's :class:`~inference.pipeline.ImageLimits` built from these settings."""
        from inference.pipeline import ImageLimits

        return ImageLimits(
            max_upload_bytes=self.max_upload_bytes,
            max_input_pixels=self.max_input_pixels,
            max_output_pixels=self.max_output_pixels,
            max_scale=self.max_scale,
        )

    def limits_dict(self) -> dict[str, float | int]:
        """Every request limit by name (served by ``/v1/model``)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_input_pixels": self.max_input_pixels,
            "max_output_pixels": self.max_output_pixels,
            "max_scale": self.max_scale,
            "max_queue_tiles": self.max_queue_tiles,
            "max_inflight_requests": self.max_inflight_requests,
            "request_timeout_s": self.request_timeout_s,
        }
