"""Startup, warmup and shutdown of one service instance (asyncio; no HTTP).

Startup: load the engine (failure aborts startup), then warm it up in the background and start the
batcher. A failed warmup leaves the service unready *and* unhealthy (``/healthz`` 503), so the
orchestrator restarts it instead of keeping a pod that can never serve.

Shutdown, from the first trigger on (SIGTERM/SIGINT via :mod:`service.main`, or the lifespan exit):

1. :func:`begin_shutdown`: readiness and ``drrn_ready`` drop, new ``/upscale`` requests get 503
   ``shutting_down`` with Retry-After, and :func:`drain` starts on the loop right away;
2. :func:`drain`: admitted requests get ``shutdown_grace_s`` to finish, whole (body, decode, batcher,
   encode); then the batcher stops, failing whatever it still holds with 503 ``shutting_down``.

uvicorn meanwhile stops accepting connections and waits (``timeout_graceful_shutdown``, set a little above
the grace by :mod:`service.main`) for open ones to finish, so requests left at the grace limit still get a
JSON answer before uvicorn cancels anything. A request can take up to ``request_timeout_s``; with
``shutdown_grace_s >= request_timeout_s`` every admitted request ends on its own terms (a warning at
startup says when that does not hold).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

from engines.base import Engine
from engines.ort_engine import CUDA, OrtEngine, choose_model_path, select_providers
from inference.batcher import TileBatcher
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("drrn.service")


def warn_on_config_conflicts(st: ServiceState) -> None:
    """Log settings that work but surprise: outputs too big for the queue, and a shutdown grace shorter
    than a request may take."""
    s, core = st.settings, st.settings.tile - 2 * st.margin
    side = math.isqrt(s.max_output_pixels)
    worst = math.ceil(side / core) ** 2
    if worst > s.max_queue_tiles:
        log.warning(
            "max_output_pixels=%d needs up to %d tiles of core %d > max_queue_tiles=%d: outputs above "
            "~%.1f MP will be refused with 413 too_many_tiles",
            s.max_output_pixels,
            worst,
            core,
            s.max_queue_tiles,
            s.max_queue_tiles * core * core / 1e6,
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


def engine_from_settings(settings: Settings) -> OrtEngine:
    """Build the :class:`OrtEngine` the settings describe (provider choice, fp16 model on CUDA, threads)."""
    providers = select_providers(settings.providers, settings.cuda_device_id, settings.cudnn_conv_algo_search)
    on_cuda = any(not isinstance(p, str) and p[0] == CUDA for p in providers)
    path = choose_model_path(settings.model_path, settings.fp16_model_path, on_cuda)
    return OrtEngine(
        path,
        tile=settings.tile,
        max_batch=settings.max_batch,
        providers=providers,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        graph_optimization=settings.graph_optimization,
    )


async def startup(st: ServiceState, engine: Engine | None, engine_pool: ThreadPoolExecutor) -> None:
    """Load the engine (failures abort startup: a service without a model must not pretend to run)."""
    s = st.settings
    st.no_inflight = asyncio.Event()
    st.no_inflight.set()
    st.engine = engine or await asyncio.get_running_loop().run_in_executor(
        engine_pool, engine_from_settings, s
    )
    st.margin = s.resolve_margin(st.engine.depth)
    st.model_info = st.engine.info()
    st.metrics.set_model(st.model_info)
    warn_on_config_conflicts(st)


async def warm_and_start(st: ServiceState, engine_pool: ThreadPoolExecutor) -> None:
    """Warm up on the engine's own thread, then start the batcher and report ready."""
    s, engine = st.settings, st.engine
    assert engine is not None
    t0 = time.perf_counter()
    try:
        await asyncio.get_running_loop().run_in_executor(engine_pool, engine.warmup)
    except Exception as exc:
        log.exception("warmup failed; the service stays unready and /healthz reports 503")
        st.startup_error = f"warmup failed: {exc}"
        st.metrics.errors.labels(kind="warmup").inc()
        st.metrics.ready.set(0)
        return
    log.info(
        "warmup of batch sizes 1..%d at %dx%d took %.2fs",
        s.max_batch,
        s.tile,
        s.tile,
        time.perf_counter() - t0,
    )
    if st.shutting_down:  # SIGTERM arrived during warmup: nothing to serve any more
        return
    st.batcher = TileBatcher(
        engine.run,
        max_batch=s.max_batch,
        max_delay_ms=s.max_delay_ms,
        max_queue_tiles=s.max_queue_tiles,
        executor=engine_pool,
        observer=st.metrics,
        retry_after_s=s.retry_after_s,
        tile=s.tile,
    )
    st.batcher.start()
    st.ready = True
    st.metrics.ready.set(1)


def begin_shutdown(st: ServiceState) -> asyncio.Task[None]:
    """Stop taking requests and start :func:`drain` on the running loop; idempotent (returns the one
    drain task). Called from the loop: ``service.main`` schedules it from its signal handler."""
    st.shutting_down, st.ready = True, False
    st.metrics.ready.set(0)
    if st.drain_task is None:
        grace = st.settings.shutdown_grace_s
        log.info("shutting down: %d requests in flight, %.1fs grace", st.inflight, grace)
        st.drain_task = asyncio.get_running_loop().create_task(drain(st, grace), name="drrn-drain")
    return st.drain_task


async def drain(st: ServiceState, grace_s: float) -> None:
    """Give admitted requests up to ``grace_s`` to finish, then stop the batcher (failing what it still
    holds with :class:`~inference.batcher.ShuttingDownError`, i.e. 503 JSON)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + grace_s
    if st.inflight and st.no_inflight is not None:
        try:
            await asyncio.wait_for(st.no_inflight.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("%d requests still in flight after %.1fs shutdown grace", st.inflight, grace_s)
    if st.batcher is not None:
        await st.batcher.stop(max(0.0, end - loop.time()))


async def shutdown(st: ServiceState, warm: asyncio.Task[None] | None) -> None:
    """Lifespan exit: drain (or finish the drain a signal started) and stop everything."""
    drain_task = begin_shutdown(st)
    if warm is not None and not warm.done():
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
    (outcome,) = await asyncio.gather(drain_task, return_exceptions=True)
    if isinstance(outcome, Exception):
        log.error("drain failed", exc_info=outcome)
    if st.batcher is not None:  # idempotent; covers a batcher started while the drain ran
        await st.batcher.stop(0)
