"""The Upscaler core: one object runs a request end to end, as vLLM's engine client is to its routes.

It owns the served models, the thread pools, the cross-request batcher and the pipeline stages, times each
stage, and keeps readiness in one state machine (:class:`~inference.upscaler_types.Phase`). It knows
nothing of HTTP: the caller hands it an async ``read`` (the body, with its own byte limit) and an optional
``disconnected`` awaitable, and maps the domain errors of :mod:`inference.upscaler_types` to status codes
in one place (``service.errors``).

A request, all under one deadline (arrival + ``request_timeout_s``): admission (ready? bounds not
reached?) -> model and scale checks -> read, within ``upload_timeout_s`` of arrival (408 past it), counted
against ``max_uploads`` only -> an in-flight slot (``max_inflight``: clients that stall or trickle their
bodies never hold the slots that bound decode and compute) -> ``probe`` (header only; refused early when
the model's queue cannot take that many tiles, or the measured engine speed cannot finish them by the
deadline) -> ``prepare`` on a CPU thread (decode, bicubic, tiles) -> batcher (one model per batch;
cancelled when the client goes away) -> ``finish`` on a CPU thread (stitch, colour, PNG).
A deadline that passes while a CPU-pool step runs ends the request at once; the thread finishes that step
in the background (a running thread cannot be interrupted) and its result is dropped.

Lifecycle: :meth:`Upscaler.load` (engines built on the engine thread; any failure names the model and
fails startup) -> :meth:`warm_and_start` (every model warmed, then the batcher starts: READY; a failed
warmup is FAILED, which ``/healthz`` reports) -> :meth:`drain` (DRAINING: new requests refused, admitted
ones get a grace period) -> :meth:`close` (STOPPED: batcher stopped, engines closed, pools joined).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from engines.repository import UnknownModelError
from inference import pipeline
from inference.batch_types import DeadlineExceededError, EngineStalledError
from inference.batcher import TileBatcher
from inference.batcher_setup import WarmupRuns, build_batcher
from inference.cpu_stages import CpuStages
from inference.pipeline import ImageLimits
from inference.request_params import parse_ensemble, parse_scale
from inference.request_slots import RequestSlots
from inference.upscaler_types import (
    NotReadyError,
    Phase,
    ServedModel,
    StageDeadlineError,
    UploadTimeoutError,
    UpscalerConfig,
    UpscaleResult,
    UpscalerObserver,
    race,
)

log = logging.getLogger("drrn.upscaler")
Loader = Callable[[], Mapping[str, ServedModel]]


class Upscaler:
    """Serves ``upscale`` requests over one or more models on one device (one engine call at a time)."""

    def __init__(
        self,
        config: UpscalerConfig,
        limits: ImageLimits,
        default_model: str,
        observer: UpscalerObserver | None = None,
    ) -> None:
        self.config, self.limits, self.default_model = config, limits, default_model
        self.observer = observer or UpscalerObserver()
        self.models: dict[str, ServedModel] = {}
        self.phase = Phase.STARTING
        self.failure: str | None = None  # why the phase is FAILED
        self.slots = RequestSlots(config.max_uploads, config.max_inflight, self.observer)
        self.batcher: TileBatcher | None = None
        # One thread owns every model: loading, warmup and each batch run happen on it, one at a time.
        self._engine_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drrn-engine")
        self.cpu = CpuStages(config.cpu_workers)

    # --- readiness --------------------------------------------------------------------------------------
    def _set_phase(self, phase: Phase, failure: str | None = None) -> None:
        self.phase, self.failure = phase, failure or self.failure
        self.observer.on_phase(phase)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and self.batcher is not None and self.batcher.running

    @property
    def unhealthy(self) -> str | None:
        """Why this process can never serve (failed warmup, dead batcher worker), else None."""
        if self.phase is Phase.FAILED:
            return self.failure
        if self.engine_stalled:
            return str(self.batcher.failure)
        if self.batcher is not None and self.batcher.failure is not None:
            return f"batcher worker crashed: {self.batcher.failure!r}"
        return None

    @property
    def engine_stalled(self) -> bool:
        """The watchdog saw an engine call hang (its thread may never come back)."""
        return self.batcher is not None and isinstance(self.batcher.failure, EngineStalledError)

    # --- lifecycle --------------------------------------------------------------------------------------
    async def load(self, loader: Loader) -> None:
        """Build the models on the engine thread; raises (naming the model) if any fails to load."""
        models = await asyncio.get_running_loop().run_in_executor(self._engine_pool, loader)
        self.models = dict(models)  # owned from here on: close() releases them, also after the error below
        if self.default_model not in models:
            raise UnknownModelError(self.default_model, sorted(models))

    async def warm_and_start(self) -> None:
        """Warm every model on its thread, then start the batcher: READY. A failed warmup is FAILED."""
        loop = asyncio.get_running_loop()
        warm: dict[str, WarmupRuns] = {}
        for m in self.models.values():
            if self.phase is not Phase.STARTING:  # a shutdown arrived: warm nothing more
                return
            t0 = time.perf_counter()
            try:
                warm[m.name] = await loop.run_in_executor(self._engine_pool, m.engine.warmup) or []
            except Exception as exc:
                if self.phase is not Phase.STARTING:  # failing while draining is not a failed service
                    return
                log.exception("warmup of model %r failed; the service stays unready and unhealthy", m.name)
                self._set_phase(Phase.FAILED, f"warmup of model {m.name!r} failed: {exc}")
                return
            log.info("warmed model %r (tile %d) in %.2fs", m.name, m.tile, time.perf_counter() - t0)
        if self.phase is not Phase.STARTING:  # a shutdown arrived during warmup
            return
        self.batcher = build_batcher(self.models, self.config, self._engine_pool, self.observer, warm)
        self.batcher.start()
        self._set_phase(Phase.READY)

    def begin_drain(self) -> None:
        """Refuse new requests from now on (idempotent)."""
        if self.phase in (Phase.STARTING, Phase.READY):
            self._set_phase(Phase.DRAINING)

    async def drain(self, grace_s: float) -> None:
        """Give admitted requests up to ``grace_s`` to finish, then stop the batcher (what it still holds
        fails with ``ShuttingDownError``)."""
        self.begin_drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + grace_s
        if self.slots.busy and not await self.slots.wait_idle(grace_s):
            log.warning(
                "%d requests still in flight after %.1fs shutdown grace", self.slots.inflight, grace_s
            )
        if self.batcher is not None:
            await self.batcher.stop(max(0.0, end - loop.time()))

    async def close(self) -> None:
        """Stop everything and release the engines; waits for the pools' running work to end."""
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.stop(0)
        if self.engine_stalled:  # its thread is stuck in the engine: neither join it nor close under it
            log.error("engine stalled: leaving its thread and sessions to the process exit")
            self._engine_pool.shutdown(wait=False, cancel_futures=True)
            self.cpu.shutdown(wait=False)
        else:
            # Join first: a batch or warmup running on the engine thread must not see its session closed.
            await asyncio.get_running_loop().run_in_executor(None, self._join_pools)
            for m in self.models.values():
                m.engine.close()
        if self.phase is not Phase.FAILED:
            self._set_phase(Phase.STOPPED)

    def _join_pools(self) -> None:
        self._engine_pool.shutdown(wait=True, cancel_futures=True)
        self.cpu.shutdown(wait=True)

    # --- requests ---------------------------------------------------------------------------------------
    def resolve(self, model: str | None) -> ServedModel:
        """The served model called ``model`` (None: the default), or :class:`UnknownModelError`."""
        name = model or self.default_model
        if name not in self.models:
            raise UnknownModelError(name, sorted(self.models))
        return self.models[name]

    def _admit(self) -> None:
        if not self.ready:
            if self.phase in (Phase.DRAINING, Phase.STOPPED):
                raise NotReadyError("shutting_down", "service is shutting down; retry (another replica)")
            why = self.unhealthy
            raise NotReadyError("not_ready", f"service failed: {why}" if why else "service is starting up")
        self.slots.check()

    async def upscale(
        self,
        read: Callable[[], Awaitable[bytes]],
        scale: str | None,
        model: str | None,
        request_id: str,
        facts: dict,
        disconnected: Callable[[], Awaitable[None]] | None = None,
        ensemble: str | None = None,
    ) -> UpscaleResult:
        """Run one request. ``facts`` (the caller's access-log dict) is filled in as stages complete, so
        it is useful on failure too. Raises the errors of :mod:`inference.upscaler_types`, the batcher's
        and :class:`~inference.pipeline.ImageError`."""
        arrival = asyncio.get_running_loop().time()
        facts.update(scale=scale, model=model or self.default_model)
        if ensemble is not None:
            facts["ensemble"] = ensemble
        self._admit()
        served = self.resolve(model)
        params = parse_scale(scale, self.limits), parse_ensemble(ensemble, self.limits)
        with ExitStack() as serving:
            with self.slots.upload():
                # Handed over in a list that _run empties, so no frame keeps the upload (up to
                # max_upload_bytes) while the request's tiles wait for the engine.
                body = [await self._receive(read, request_id, facts, arrival)]
                # The in-flight slot is taken only now that the body is in, but before the upload slot
                # is given back: with neither held for an instant, a drain would stop the batcher.
                serving.enter_context(self.slots.serve())
            return await self._run(served, body, params, request_id, facts, arrival, disconnected)

    async def _receive(self, read: Callable[[], Awaitable[bytes]], rid: str, facts: dict, arrival: float):
        """The body, within ``upload_timeout_s`` (408) and the request's deadline (504) of ``arrival``."""
        c, t0 = self.config, time.perf_counter()
        upload_end, deadline = arrival + c.upload_timeout_s, arrival + c.request_timeout_s
        try:
            async with asyncio.timeout_at(min(upload_end, deadline)):
                data = await read()
        except TimeoutError:
            facts["timed_out_in"] = "read"
            if upload_end < deadline:
                raise UploadTimeoutError(c.upload_timeout_s) from None
            raise StageDeadlineError("read", rid) from None
        facts["bytes_in"], facts["read_ms"] = len(data), round((time.perf_counter() - t0) * 1000, 3)
        return data

    async def _run(self, m, body, params, rid, facts, arrival, disconnected) -> UpscaleResult:
        """Probe, prepare, queue and encode ``body.pop()`` (the upload's bytes, dropped once prepared)."""
        loop, c, data = asyncio.get_running_loop(), self.config, body.pop()
        deadline = arrival + c.request_timeout_s
        timings: dict[str, float] = {"read": facts["read_ms"] / 1000}
        stage, cpu_wait, (scale, ensemble) = "decode", 0.0, params
        try:
            async with asyncio.timeout_at(deadline):
                t0 = time.perf_counter()
                # Off the event loop: reading a header can mean inflating every text chunk of a PNG.
                (w, h), (ow, oh) = await loop.run_in_executor(
                    None, pipeline.probe, data, scale, self.limits, ensemble
                )
                n_tiles, tile_px = pipeline.tile_load((ow, oh), m.tile, m.margin, ensemble, m.tile_shape)
                facts.update(input=f"{w}x{h}", output=f"{ow}x{oh}", tiles=n_tiles)
                # Refuse before the expensive part.
                mpx = ow * oh / 1e6
                cpu_s = self.cpu.estimate(ensemble, mpx)
                est = self.batcher.check_capacity(m.name, n_tiles, deadline, tile_px, sum(cpu_s.values()))
                if est is not None:  # what admission expected, beside what happened, in the access log
                    facts.update(
                        est_engine_ms=round(est * 1000), est_cpu_ms=round(sum(cpu_s.values()) * 1000)
                    )
                probe_s, t0 = time.perf_counter() - t0, time.perf_counter()
                args = (data, scale, self.limits, m.tile, m.margin, ensemble, m.tile_shape)
                prepared, prepare_s = await self.cpu.run(("prepare", ensemble), mpx, pipeline.prepare, *args)
                del data, args  # the tiles, planes and alpha hold all that is needed from here on
                cpu_wait += time.perf_counter() - t0 - prepare_s
                timings["decode"] = probe_s + prepare_s
                (w, h), (ow, oh) = prepared.input_size, prepared.output_size  # upright (EXIF applied)
                facts.update(input=f"{w}x{h}", output=f"{ow}x{oh}")
                self.observer.on_prepared(m.name, timings["decode"], w * h / 1e6, n_tiles)

                stage = "queue"  # the batcher counts its own rejections, deadline included
                # If the batcher counts this request's cancellation, the caller must not count it again.
                counted = functools.partial(facts.__setitem__, "rejection_counted_by", "batcher")
                submit = self.batcher.submit(m.name, prepared.tiles, deadline, rid, cpu_s["finish"], counted)
                result = await race(submit, disconnected() if disconnected else None)
                timings["queue"], timings["infer"] = result.queue_wait_s, result.infer_s

                stage, t0 = "encode", time.perf_counter()
                png, encode_s = await self.cpu.run(
                    ("finish", ensemble), mpx, pipeline.finish, prepared, result.outputs
                )
                cpu_wait += time.perf_counter() - t0 - encode_s
                timings["encode"] = encode_s
                self.observer.on_encoded(m.name, encode_s)
        except TimeoutError:
            facts["timed_out_in"] = stage
            if stage == "queue":  # the batcher already counted it
                raise DeadlineExceededError(f"request {rid} exceeded its deadline in the queue") from None
            if stage == "encode":  # its engine work is thrown away too
                self.observer.on_deadline_work(m.name, result.engine_s)
            raise StageDeadlineError(stage, rid) from None
        timings["total"] = loop.time() - arrival
        facts.update(
            bytes_out=len(png), engine_runs=result.engine_runs, cpu_wait_ms=round(cpu_wait * 1000, 3)
        )
        facts.update({f"{k}_ms": round(v * 1000, 3) for k, v in timings.items() if k != "total"})
        return UpscaleResult(png, timings, facts)
