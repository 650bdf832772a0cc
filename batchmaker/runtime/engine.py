"""The engine: admission, device placement, and the bridge between asyncio and device threads.

``submit`` runs on the event loop. It validates the request, unfolds it into a
graph, checks the admission limit *at once* (RESOURCE_EXHAUSTED, never a
queue), pins the request to the least-loaded device and hands it to that
device's worker thread. Outcomes come back with one ``call_soon_threadsafe``
per plan and fan out to each request's ``RequestStream``, one block of steps each.

Admission is counted here, on the loop thread, so no lock is needed: a slot
counts as taken from submit until the loop hears the request ended, which is
never less than what the worker's scheduler holds.

The engine builds nothing device-specific itself: it is handed an executor
factory (one executor per device; the torch one by default) and a clock (the
monotonic one by default), and the scheduler of its mode comes from
``scheduler.make_scheduler``. So the engine imports no torch, and its logic runs
under a fake executor and a manual clock in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from batchmaker.config import EngineConfig
from batchmaker.errors import (
    AdmissionRejectedError,
    BatchMakerError,
    DeadlineExceededError,
    ExecutionFailedError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestCancelledError,
    UnavailableError,
)
from batchmaker.models.base import Model
from batchmaker.runtime import heap
from batchmaker.runtime.executor import CellSet, Executor, ExecutorFactory
from batchmaker.runtime.stream import OutputBudget, RequestStream
from batchmaker.runtime.worker import DeviceWorker, WorkerStats
from batchmaker.types import InferRequest, StepBlock, StepOutput
from scheduler import (
    CellTypeSpec,
    CellularScheduler,
    Clock,
    FinishReason,
    MonotonicClock,
    SchedRequest,
    SloConfig,
    SloController,
    SloDecision,
    StepOutcome,
    make_scheduler,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """A snapshot of one device, for metrics, tests and benchmarks."""

    device: str
    num_live: int
    num_free_slots: dict[str, int]
    worker: WorkerStats


class _Placement:
    """Loop-side admission accounting of one device."""

    __slots__ = ("free_slots", "index", "num_live")

    def __init__(self, index: int, pools: dict[str, int]) -> None:
        self.index = index
        self.num_live = 0
        self.free_slots = dict(pools)


class Engine:
    """Serves requests for a set of models on one or more devices."""

    def __init__(
        self,
        config: EngineConfig,
        models: Iterable[Model],
        *,
        executor_factory: ExecutorFactory | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``executor_factory``: one executor per device of ``config.devices``; ``None`` is
        the torch executor. ``clock``: what the schedulers and deadlines read; ``None`` is
        ``time.monotonic``. Both are seams for tests, benchmarks and other devices."""
        self.config = config
        models = list(models)
        self._models: dict[str, dict[int, Model]] = {}
        self._check_new(models)
        if executor_factory is None:
            from batchmaker.runtime.torch_executor import TorchExecutor

            def executor_factory(device: str) -> Executor:
                graphs = config.cuda_graphs and device.startswith("cuda")
                return TorchExecutor(device, step_graphs=graphs)

        self._clock: Clock = clock or MonotonicClock()
        known = {key for m in models for c in m.cells for key in (m.qualify(c), f"{m.name}/{c}")}
        unknown = sorted(set(config.max_batch_per_cell) - known)
        if unknown:
            raise ValueError(
                f"max_batch_per_cell: no cell type {unknown[0]!r}; served: {sorted(known)}"
            )
        specs, capacities = self._scheduler_parts(models)
        cells = CellSet.of(models, config.num_slots)
        sched_config = config.scheduler_config()
        self._workers: list[DeviceWorker] = []
        self._placements: list[_Placement] = []
        for i, device in enumerate(config.devices):
            executor = executor_factory(device)
            executor.load_cells(cells)()  # no thread runs yet: install it here
            scheduler = make_scheduler(sched_config, specs, capacities, self._clock)
            self._workers.append(
                DeviceWorker(
                    scheduler, executor, self._deliver_threadsafe, overlap=config.overlap_steps
                )
            )
            self._placements.append(_Placement(i, capacities))
        for m in models:
            self._models.setdefault(m.name, {})[m.version] = m
        self._streams: dict[str, tuple[RequestStream, _Placement, SchedRequest]] = {}
        self._output_budget = OutputBudget(
            config.max_buffered_bytes_per_stream, config.max_buffered_bytes
        )
        """Unread outputs every stream together may hold (a slow reader's backlog)."""
        self._live_per_model: dict[str, int] = {}
        """Live requests per model key: what an unload waits for."""
        self._unloading: set[str] = set()
        self._loading: set[str] = set()
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._stopped = False
        self._idle = asyncio.Event()
        self._ended = asyncio.Event()
        """Set whenever a request ends; an unload waiting for its model's requests clears it."""
        self.slo: SloController | None = None
        """With ``config.slo_p99_s``: the controller that sets the admission limit and the
        steps per plan (``control_slo``)."""
        if config.slo_p99_s is not None:
            self.slo = SloController(
                SloConfig(config.slo_p99_s),
                live_limit=config.live_limit,
                max_steps_per_plan=config.max_steps_per_plan,
                now=self._clock.now(),
            )
        self._control: asyncio.Task[None] | None = None

    # ---- construction -------------------------------------------------------

    def _check_new(self, models: Sequence[Model]) -> None:
        keys: set[str] = set()
        for m in models:
            if m.key in keys or m.version in self._models.get(m.name, {}):
                raise ValueError(f"model {m.key} registered twice")
            keys.add(m.key)

    def _scheduler_parts(
        self, models: Sequence[Model]
    ) -> tuple[list[CellTypeSpec], dict[str, int]]:
        return scheduler_parts(models, self.config)

    # ---- models, while serving -----------------------------------------------------

    async def add_models(self, models: Sequence[Model]) -> None:
        """Serve more models (new names or new versions) without pausing the ones served.

        Each device thread takes the new cells and pools between two steps; the models
        answer requests once every device has them.
        """
        models = list(models)
        if self._stopped:
            raise UnavailableError("the engine was shut down")
        self._check_new(models)
        busy = sorted(m.key for m in models if m.key in self._unloading | self._loading)
        if busy:
            raise UnavailableError(f"model {busy[0]} is being loaded or unloaded; try again")
        keys = {m.key for m in models}
        self._loading |= keys
        try:
            specs, capacities = self._scheduler_parts(models)
            cells = CellSet.of(models, self.config.num_slots)
            # The slow part (weights to each device, pools allocated), off the loop and off
            # the step loops; each device then takes the model between two of its steps.
            installs = await heap.to_thread(
                lambda: [w.executor.load_cells(cells) for w in self._workers]
            )
            # Shielded: once the devices start taking the model, a cancelled caller must
            # not leave the loop's books out of step with them.
            await asyncio.shield(self._install(models, specs, capacities, installs))
        finally:
            self._loading -= keys
        if self.config.freeze_heap and self._loop is not None:
            heap.freeze()  # the new model's objects are long-lived too
        log.info("now serving %s", ", ".join(m.key for m in models))

    async def _install(
        self,
        models: list[Model],
        specs: list[CellTypeSpec],
        capacities: dict[str, int],
        installs: list[Callable[[], None]],
    ) -> None:
        done = []
        for worker, install in zip(self._workers, installs, strict=True):

            def add(worker: DeviceWorker = worker, install: Callable[[], None] = install) -> None:
                worker.scheduler.add_cell_types(specs, capacities)
                install()

            done.append(asyncio.wrap_future(worker.call(add)))
        await asyncio.gather(*done)
        for place in self._placements:
            place.free_slots.update(capacities)
        for m in models:
            self._models.setdefault(m.name, {})[m.version] = m

    async def remove_models(self, keys: Sequence[str], grace: float | None = None) -> None:
        """Stop serving models (``name@version`` keys); other models are not disturbed.

        New requests for them get NOT_FOUND at once. Their live requests may finish for
        up to ``grace`` seconds (``None``: as long as they take); the rest then end with
        UNAVAILABLE. Their cells and state pools are freed on every device.
        """
        by_key = {m.key: m for m in self.models}
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise ModelNotFoundError(f"model {missing[0]} is not served")
        models = [by_key[k] for k in dict.fromkeys(keys)]
        del by_key
        self._unregister(models)
        # Shielded: the models are already out of the registry, so the unload must run to
        # its end even if its caller goes away.
        await asyncio.shield(self._uninstall(models, grace))
        names = ", ".join(m.key for m in models)
        del models  # the last reference: the models' cycles are garbage from here on
        if self.config.freeze_heap and self._loop is not None:
            heap.refreeze()
        log.info("stopped serving %s", names)

    def _unregister(self, models: list[Model]) -> None:
        """Out of the registry: new requests for them get NOT_FOUND from here on."""
        for m in models:
            versions = self._models[m.name]
            del versions[m.version]
            if not versions:
                del self._models[m.name]
            self._unloading.add(m.key)

    async def _uninstall(self, models: list[Model], grace: float | None) -> None:
        try:
            await self._wait_models_idle([m.key for m in models], grace)
            await self._free(models)
        finally:
            self._unloading.difference_update(m.key for m in models)

    async def _free(self, models: list[Model]) -> None:
        specs, capacities = self._scheduler_parts(models)
        names = [s.name for s in specs]
        cells = CellSet.of(models, self.config.num_slots)
        done = []
        for worker in self._workers:

            def remove(worker: DeviceWorker = worker) -> None:
                worker.scheduler.remove_cell_types(names, capacities)
                worker.executor.remove_cells(cells)

            done.append(asyncio.wrap_future(worker.call(remove)))
        await asyncio.gather(*done)
        for place in self._placements:
            for pool in capacities:
                del place.free_slots[pool]

    async def _wait_models_idle(self, keys: list[str], grace: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        aborted = False
        while any(self._live_per_model.get(k) for k in keys):
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0 and not aborted:
                aborted = True
                for stream, place, _ in list(self._streams.values()):
                    if stream.model_key in keys:
                        self._workers[place.index].abort(stream.request_id, FinishReason.UNLOADED)
            self._ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), None if aborted else remaining)

    # ---- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start the device threads; call from the event loop that will submit."""
        if self._loop is not None or self._stopped:
            raise RuntimeError("engine already started" if self._loop else "engine was shut down")
        self._loop = asyncio.get_running_loop()
        for w in self._workers:
            w.start()
        self._accepting = True
        if self.slo is not None:
            self._control = asyncio.create_task(self._control_loop(), name="batchmaker-slo")
        if self.config.freeze_heap:
            heap.freeze()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop admitting, let live requests finish for up to ``grace`` seconds, then end the rest.

        ``grace=None`` waits for every live request; ``0`` ends them at once.
        """
        self._accepting = False
        if self._control is not None:
            self._control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control
            self._control = None
        if self._stopped:
            return
        if self._loop is None:  # never started: no thread to stop, nothing live
            self._stopped = True
            return
        if self._streams and grace != 0:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.warning(
                    "grace period over with %d live requests; ending them", len(self._streams)
                )
        for w in self._workers:
            w.stop()
        for w in self._workers:
            await asyncio.to_thread(w.join)
        # The workers' final outcomes were scheduled on the loop; let them land.
        await asyncio.sleep(0)
        self._stopped = True

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown(grace=0)

    # ---- requests ----------------------------------------------------------------

    def model(self, name: str, version: int | None = None) -> Model:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} is not served")
        if version is None:
            return versions[max(versions)]
        m = versions.get(version)
        if m is None:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version} (served: {sorted(versions)})"
            )
        return m

    def serves(self, name: str) -> bool:
        """Whether some version of ``name`` is served now (O(1): per request)."""
        return bool(self._models.get(name))

    @property
    def models(self) -> list[Model]:
        """Every model version served now (not those being unloaded)."""
        return [m for versions in self._models.values() for m in versions.values()]

    def max_batch_for(self, model: Model, cell: str) -> int:
        """The max batch of one of ``model``'s (local) cell types, as this engine runs it."""
        return self.config.max_batch_for(model.qualify(cell), model.max_batch.get(cell))

    def submit(self, request: InferRequest) -> RequestStream:
        """Admit ``request`` and return its stream, or raise a ``BatchMakerError`` at once."""
        if not self._accepting or self._loop is None:
            raise UnavailableError("the engine is not accepting requests")
        model = self.model(request.model, request.version)
        model.validate(request)
        request_id = request.request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            raise InvalidRequestError(f"request_id: {request_id!r} is already live")
        graph = model.build_graph(request)
        wanted = graph.slots_per_pool()
        too_many = max(wanted.values(), default=0)
        if too_many > self.config.num_slots:
            # Never admissible, so not RESOURCE_EXHAUSTED (which invites a retry).
            raise InvalidRequestError(
                f"inputs: the request needs {too_many} state slots at once (one per tree "
                f"leaf), more than the {self.config.num_slots} per model this server has"
            )
        place = self._place(wanted)
        place.num_live += 1
        if self.slo is not None:
            self.slo.admitted(place.num_live)
        for pool, n in wanted.items():
            place.free_slots[pool] -= n
        stream = RequestStream(
            request_id, model.name, model.version, self.abort, self._output_budget
        )
        clock_now = self._clock.now()
        sreq = SchedRequest(
            request_id,
            graph,
            arrival=clock_now,
            priority=request.priority,
            deadline=None if request.timeout is None else clock_now + request.timeout,
            top_k=request.top_k,
            wants_outputs=request.return_vectors,
            tag=stream,
        )
        self._streams[request_id] = (stream, place, sreq)
        self._live_per_model[model.key] = self._live_per_model.get(model.key, 0) + 1
        self._workers[place.index].submit(sreq)
        return stream

    def _place(self, wanted: dict[str, int]) -> _Placement:
        slo = self.slo
        limit = self.live_limit
        best: _Placement | None = None
        reason = ""
        for p in self._placements:
            if p.num_live >= limit:
                reason = (
                    f"{p.num_live} live requests on {self.config.devices[p.index]}, limit {limit}"
                )
                if slo is not None and limit < self.config.live_limit:
                    reason += f" (set by the SLO controller for p99 <= {slo.config.p99_s:g} s)"
                continue
            short = [pool for pool, n in wanted.items() if p.free_slots[pool] < n]
            if short:
                reason = (
                    f"no free state slot in pool {short[0]!r} on {self.config.devices[p.index]}"
                )
                continue
            if best is None or p.num_live < best.num_live:
                best = p
        if best is None:
            if slo is not None:
                slo.rejected()
            raise AdmissionRejectedError(f"admission limit reached: {reason}")
        return best

    def abort(self, request_id: str) -> None:
        """Cancel a live request: it leaves its batch at the next step boundary."""
        entry = self._streams.get(request_id)
        if entry is not None:
            self._workers[entry[1].index].abort(request_id, FinishReason.CANCELLED)

    async def infer(self, request: InferRequest) -> list[StepOutput]:
        """Submit and collect every step (the unary path)."""
        return await self.submit(request).collect()

    # ---- outcomes, on the loop ------------------------------------------------------

    def _deliver_threadsafe(self, outcome: StepOutcome, error: BaseException | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # The loop may close between the check and the call.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._deliver, outcome, error)

    def _deliver(self, outcome: StepOutcome, error: BaseException | None) -> None:
        """Hand one step's outcome to its streams, on the loop. Guarded per request, as the
        worker guards each step: whatever one stream raises fails that request alone
        (INTERNAL; it leaves its batch at the next step), and every finished request still
        returns its admission count and slots, so nothing else hangs or leaks."""
        for request, step, res, row, count in outcome.each():
            stream, k = request.tag, request.top_k
            try:
                # One block per request per plan: the plan's arrays and where its rows start;
                # nothing is sliced, and no per-step object is built, until a reader asks.
                stream.push(
                    StepBlock(
                        step,
                        count,
                        outputs=res.outputs if request.wants_outputs else None,
                        top_ids=res.top_ids if k else None,
                        top_scores=res.top_scores if k else None,
                        start=row if res.offsets is None else int(res.offsets[row]),
                        k=k,
                    )
                )
            except Exception as exc:
                self._fail_delivery(stream, exc)
        for request in outcome.finished:
            entry = self._streams.pop(request.request_id, None)
            if entry is None:
                continue
            stream, place, sreq = entry
            place.num_live -= 1
            self._live_per_model[stream.model_key] -= 1
            self._ended.set()
            for pool in sreq.graph.slot_pools:
                place.free_slots[pool] += 1
            reason = request.finish_reason
            assert reason is not None, "the scheduler hands out only finished requests"
            try:
                if self.slo is not None and not reason.is_error:
                    self.slo.finished(sreq.arrival, self._clock.now(), sreq.graph.longest_run)
                stream.finish(
                    reason,
                    _error_for(reason, error),
                    queue_time=sreq.started_at - sreq.arrival if sreq.started else None,
                )
            except Exception as exc:
                self._fail_delivery(stream, exc)
        if not self._streams:
            self._idle.set()

    def _fail_delivery(self, stream: RequestStream, exc: Exception) -> None:
        log.error("delivering outputs to %s failed", stream.request_id, exc_info=exc)
        with contextlib.suppress(Exception):
            stream.finish(
                FinishReason.FAILED,
                ExecutionFailedError(f"delivering this request's outputs failed ({exc!r})"),
            )
        self.abort(stream.request_id)

    # ---- the SLO controller -----------------------------------------------------------

    async def _control_loop(self) -> None:
        assert self.slo is not None
        interval = self.slo.config.interval_s
        while True:
            await asyncio.sleep(interval)
            if not self.slo.due(self._clock.now()):
                continue  # a manual clock that has not moved (tests drive it themselves)
            try:
                self.control_slo()
            except Exception:  # a controller bug must not stop serving at the last limits
                log.exception("SLO controller update failed; keeping the current limits")

    def control_slo(self) -> SloDecision | None:
        """One update of the SLO controller, applied: the admission limit here on the loop,
        the steps per plan on every device between two of its steps. The engine's timer
        calls it every ``interval_s``; tests call it under a manual clock. ``None`` without
        an SLO."""
        slo = self.slo
        if slo is None:
            return None
        busiest = max(p.num_live for p in self._placements)
        # Read from the loop while the device thread steps: the learned costs are plain
        # floats in dicts, so a read sees an older or newer mean, never a broken one.
        sched = self._workers[0].scheduler
        decision = slo.update(
            self._clock.now(),
            live_arrivals=[sreq.arrival for _, _, sreq in self._streams.values()],
            live=busiest,
            plan_cost=lambda k: sched.plan_seconds(busiest, k),
            step_cost=sched.step_seconds,
        )
        for change in decision.changes:
            log.info("SLO controller: %s", change)
        steps = decision.max_steps_per_plan
        for worker in self._workers:
            ws = worker.scheduler
            if isinstance(ws, CellularScheduler) and ws.max_steps_per_plan != steps:

                def set_steps(ws: CellularScheduler = ws) -> None:
                    ws.max_steps_per_plan = steps

                worker.call(set_steps)
        return decision

    # ---- introspection -----------------------------------------------------------------

    @property
    def num_live(self) -> int:
        return len(self._streams)

    @property
    def live_limit(self) -> int:
        """The admission limit in force per device: the SLO controller's where it runs,
        else the configured one (``EngineConfig.live_limit``)."""
        return self.config.live_limit if self.slo is None else self.slo.live_limit

    def device_stats(self) -> list[DeviceStats]:
        return [
            DeviceStats(
                device=w.device,
                num_live=p.num_live,
                num_free_slots=dict(p.free_slots),
                worker=w.stats,
            )
            for w, p in zip(self._workers, self._placements, strict=True)
        ]

    @property
    def workers(self) -> list[DeviceWorker]:
        return list(self._workers)


def _error_for(reason: FinishReason, error: BaseException | None) -> BatchMakerError | None:
    """What a request that ended for ``reason`` raises to its reader (``None``: nothing).
    ``error``: the executor's exception, when its batch failed."""
    if not reason.is_error:
        return None
    if reason is FinishReason.CANCELLED:
        return RequestCancelledError("the request was cancelled")
    if reason is FinishReason.DEADLINE_EXCEEDED:
        return DeadlineExceededError("the request's deadline passed before it finished")
    if reason is FinishReason.SHUTDOWN:
        return UnavailableError("the server shut down before the request finished")
    if reason is FinishReason.UNLOADED:
        return UnavailableError("the model was unloaded before the request finished")
    detail = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    return ExecutionFailedError(f"cell execution failed for this request's batch ({detail})")


def scheduler_parts(
    models: Sequence[Model], config: EngineConfig
) -> tuple[list[CellTypeSpec], dict[str, int]]:
    """The cell types and pool capacities ``models`` add to every device's scheduler under
    ``config``: what an engine serves, and what a step-cost profile records of it."""
    specs = [
        CellTypeSpec(
            name=m.qualify(c),
            max_batch=config.max_batch_for(m.qualify(c), m.max_batch.get(c)),
            pool=m.qualify(m.cell_pool(c)),
            arity=cell.arity,
            rank=m.cell_rank(c),
            runs=cell.supports_runs,
        )
        for m in models
        for c, cell in m.cells.items()
    ]
    capacities = {m.qualify(p): config.num_slots for m in models for p in m.pools}
    return specs, capacities
