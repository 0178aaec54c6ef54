"""How the HTTP service builds, starts and stops its :class:`~inference.upscaler.Upscaler` (no routes).

Startup: load every served model from the repository (``DRRN_MODEL_DIR``; any failure aborts startup with
one line naming the model), then warm them all in the background and start the batcher. A failed warmup
leaves the service unready *and* unhealthy (``/healthz`` 503), so the orchestrator restarts it.

Shutdown, from the first trigger on (SIGTERM/SIGINT via :mod:`service.main`, or the lifespan exit):

1. :func:`begin_shutdown`: readiness and ``drrn_ready`` drop, new ``/upscale`` requests get 503
   ``shutting_down`` with Retry-After, and the drain starts on the loop right away;
2. the drain: admitted requests get ``shutdown_grace_s`` to finish, whole (body, decode, batcher, encode);
   then the batcher stops, failing whatever it still holds with 503 ``shutting_down``;
3. the lifespan exit closes the engines and joins the thread pools.

uvicorn meanwhile stops accepting connections and waits (``timeout_graceful_shutdown``, set a little above
the grace by :mod:`service.main`) for open ones to finish. With ``shutdown_grace_s >= request_timeout_s``
every admitted request ends on its own terms (a warning at startup says when that does not hold).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

from drrn.errors import UserError
from engines.base import Engine
from inference.pipeline import count_tiles
from inference.upscaler import Loader, Upscaler
from inference.upscaler_types import ServedModel
from service.settings import Settings

log = logging.getLogger("drrn.service")


class ModelLoadError(UserError):
    """A served model could not be loaded; the message names it (startup fails)."""


def _tile_shape(setting: str, engine: Engine) -> str:
    """``auto``: uniform tiles on CUDA, where batching tiles of many requests pays; tiles that fit each
    image on the CPU, where a run's cost is its pixels and batching buys nothing."""
    if setting == "auto":
        return "uniform" if "CUDAExecutionProvider" in (getattr(engine, "providers", None) or ()) else "fit"
    return setting


def _served(
    name: str, engine: Engine, card: Mapping[str, Any], tile: int, margin: int, tile_shapes: str
) -> ServedModel:
    try:
        return ServedModel(name, engine, tile, margin, card, _tile_shape(tile_shapes, engine))
    except ValueError as exc:
        raise ModelLoadError(f"model {name!r}: {exc} (set DRRN_TILE/DRRN_MARGIN)") from exc


def model_loader(settings: Settings, engines: Mapping[str, Engine] | None = None) -> Loader:
    """What the Upscaler loads on its engine thread: the repository's models (``settings.models`` or all),
    or ``engines`` given directly (tests, other backends; margin = settings.margin or the engine's depth)."""
    s = settings

    def load_given() -> dict[str, ServedModel]:
        assert engines is not None
        return {
            name: _served(
                name, e, e.info(), e.tile, s.margin if s.margin is not None else e.depth, s.tile_shapes
            )
            for name, e in engines.items()
        }

    def load_one(repo: Any, name: str) -> ServedModel:
        from engines.resolver import open_card

        try:
            card = repo.card(name)
            engine = open_card(
                card,
                tile=s.tile,
                max_batch=s.max_batch,
                providers=s.providers,
                intra_op_threads=s.intra_op_threads,
                inter_op_threads=s.inter_op_threads,
                graph_optimization=s.graph_optimization,
                cuda_device_id=s.cuda_device_id,
                cudnn_conv_algo_search=s.cudnn_conv_algo_search,
                precision=s.precision,
            )
        except Exception as exc:
            raise ModelLoadError(f"model {name!r} failed to load: {exc}") from exc
        info = {**card.to_dict(), **engine.info(), "architecture": card.architecture}
        margin = s.margin if s.margin is not None else card.margin
        try:
            return _served(name, engine, info, engine.tile, margin, s.tile_shapes)
        except ModelLoadError:
            engine.close()
            raise

    def load_repository() -> dict[str, ServedModel]:
        from engines.repository import ModelRepository

        repo = ModelRepository(s.model_dir)
        served: dict[str, ServedModel] = {}
        try:
            for name in s.models or [card.name for card in repo.cards()]:  # cards(): names `make models`
                served[name] = load_one(repo, name)
        except BaseException:
            for m in served.values():  # a later model failed: release the sessions already built
                m.engine.close()
            raise
        return served

    return load_given if engines is not None else load_repository


def warn_on_config_conflicts(settings: Settings, upscaler: Upscaler) -> None:
    """Log settings that work but surprise: outputs too big for a model's queue, and a shutdown grace
    shorter than a request may take."""
    s = settings
    side = math.isqrt(s.max_output_pixels)
    for m in upscaler.models.values():
        # A square output at the pixel limit: about the most tiles a request can need.
        worst = count_tiles((side, side), m.tile, m.margin, shape=m.tile_shape)
        if worst > s.max_queue_tiles:
            log.warning(
                "model %r: max_output_pixels=%d needs up to %d tiles > max_queue_tiles=%d: the largest "
                "outputs will be refused with 413 too_many_tiles",
                m.name,
                s.max_output_pixels,
                worst,
                s.max_queue_tiles,
            )
    if s.shutdown_grace_s < s.request_timeout_s:
        log.warning(
            "shutdown_grace_s=%g < request_timeout_s=%g: on SIGTERM, requests still running after %gs get "
            "503 shutting_down instead of finishing (set DRRN_SHUTDOWN_GRACE_S >= DRRN_REQUEST_TIMEOUT_S, "
            "and the orchestrator's kill timeout above it)",
            s.shutdown_grace_s,
            s.request_timeout_s,
            s.shutdown_grace_s,
        )


class Lifecycle:
    """The lifespan's state: the warmup task and the one drain task (started by the first trigger)."""

    def __init__(self, settings: Settings, upscaler: Upscaler) -> None:
        self.settings, self.upscaler = settings, upscaler
        self.warm: asyncio.Task[None] | None = None
        self.drain_task: asyncio.Task[None] | None = None

    async def startup(self, loader: Loader) -> None:
        """Load every model (failures abort startup), then warm and start in the background."""
        await self.upscaler.load(loader)
        for name, m in self.upscaler.models.items():
            log.info("serving model %r: tile %d, margin %d", name, m.tile, m.margin)
        warn_on_config_conflicts(self.settings, self.upscaler)
        self.warm = asyncio.get_running_loop().create_task(self.upscaler.warm_and_start(), name="drrn-warmup")

    def begin_shutdown(self) -> asyncio.Task[None]:
        """Stop taking requests and start the drain; idempotent (returns the one drain task). Called on
        the loop: ``service.main`` schedules it from its signal handler."""
        self.upscaler.begin_drain()
        if self.drain_task is None:
            grace = self.settings.shutdown_grace_s
            log.info("shutting down: %d requests in flight, %.1fs grace", self.upscaler.slots.inflight, grace)
            self.drain_task = asyncio.get_running_loop().create_task(
                self.upscaler.drain(grace), name="drrn-drain"
            )
        return self.drain_task

    async def shutdown(self) -> None:
        """Lifespan exit: drain (or finish the drain a signal started), then close everything."""
        drain_task = self.begin_shutdown()
        if self.warm is not None and not self.warm.done():
            self.warm.cancel()
            await asyncio.gather(self.warm, return_exceptions=True)
        (outcome,) = await asyncio.gather(drain_task, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.error("drain failed", exc_info=outcome)
        await self.upscaler.close()
