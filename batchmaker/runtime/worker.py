"""One thread per device: the step loop that owns a scheduler and an executor.

``step()`` reads like vLLM's ``EngineCore.step()``: schedule, execute, update,
deliver; the loop around it waits for work and applies the commands that came
in. The asyncio loop never runs a kernel; this thread never touches a stream.
Commands come in through a locked list and a condition variable (no polling);
outcomes go out through one callback per step.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchmaker.runtime.executor import Executor, LaunchedPlan, OverlappingExecutor, StepResult
from scheduler import FinishReason, SchedRequest, Scheduler, StepOutcome, StepPlan

log = logging.getLogger(__name__)

Deliver = Callable[[StepOutcome, BaseException | None], None]


def _ended(outcome: StepOutcome, error: BaseException | None) -> None:
    """A joined worker's ``deliver``: its thread is gone, so nothing is left to deliver."""


@dataclass(slots=True)
class _Command:
    """A request for the worker thread, applied at the next step boundary, in order."""

    add: SchedRequest | None
    """Admit this request; ``None`` for an abort or a call."""
    abort_id: str = ""
    reason: FinishReason = FinishReason.CANCELLED
    call: Callable[[], None] | None = None
    """Run this on the worker thread between steps (a model being loaded or unloaded);
    ``_run_call`` takes it out before resolving ``done``."""
    done: concurrent.futures.Future[None] | None = None
    """Resolved once ``call`` ran, with its exception if it raised."""


BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Upper bounds of the batch-size histogram's buckets (rows per cell execution)."""
_NUM_BUCKETS = len(BATCH_SIZE_BUCKETS) + 1


STEPS_PER_PLAN_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Upper bounds of the steps-per-plan histogram's buckets."""


@dataclass(slots=True)
class CellTypeStats:
    num_steps: int = 0
    """Steps run: a plan of K steps counts K."""
    num_plans: int = 0
    """Plans executed (cell executions); ``num_steps / num_plans`` is steps per plan."""
    num_rows: int = 0
    """Cell-steps doing requested work: each real row's steps."""
    num_padding_rows: int = 0
    """Cell-steps computed for padding: padding rows, and a padded batch's tail."""
    num_batch_rows: int = 0
    """Real rows summed over plans: the batch-size histogram's sum."""
    batch_size_counts: list[int] = field(default_factory=lambda: [0] * _NUM_BUCKETS)
    """Plans per batch-size bucket (``BATCH_SIZE_BUCKETS``, then one past the last), counting
    real rows only. Kept here, as plain ints, so the step loop never calls into a metrics
    library."""
    steps_per_plan_counts: list[int] = field(
        default_factory=lambda: [0] * (len(STEPS_PER_PLAN_BUCKETS) + 1)
    )
    """Plans per steps-per-plan bucket (``STEPS_PER_PLAN_BUCKETS``, then one past the last)."""


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What one device's scheduler holds (see ``DeviceWorker.snapshot``)."""

    num_live: int
    num_queued: int
    """Admitted, no node run yet."""
    queue_depths: dict[str, int]
    """Ready nodes not yet run, per cell type."""
    free_slots: dict[str, int]
    slot_capacity: dict[str, int]


@dataclass(slots=True)
class WorkerStats:
    """Counters the worker thread updates; readers get a racy but consistent-enough view."""

    num_steps: int = 0
    """Plans executed (one cell execution each, of one or several steps)."""
    num_failed_steps: int = 0
    num_internal_errors: int = 0
    """Unexpected errors outside the executor; each failed every live request of the device."""
    busy_seconds: float = 0.0
    num_trial_plans: int = 0
    """Plans that ran a CPU kernel on trial (``StepResult.kernel_trial``): a new plan shape's
    first few calls time each kernel, the slower ones included, before one is kept."""
    per_cell_type: dict[str, CellTypeStats] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.per_cell_type.values())


@dataclass(slots=True)
class _InFlight:
    """A plan on the device whose scheduler update is done and whose outcome waits for it."""

    plan: StepPlan
    launched: LaunchedPlan
    outcome: StepOutcome


class DeviceWorker:
    """Drives one device's scheduler and executor on a dedicated thread."""

    def __init__(
        self, scheduler: Scheduler, executor: Executor, deliver: Deliver, *, overlap: bool = False
    ) -> None:
        """``overlap``: plan the next step while the device runs this one
        (``EngineConfig.overlap_steps``), where the executor can (``OverlappingExecutor``);
        other executors run plan by plan."""
        self.scheduler = scheduler
        self.executor = executor
        self.device = executor.device
        self._deliver = deliver
        self._overlapping: OverlappingExecutor | None = None
        if overlap and hasattr(executor, "launch") and hasattr(executor, "feeds_back"):
            self._overlapping = executor  # type: ignore[assignment]
        self._inflight: _InFlight | None = None
        """With overlap: the plan the device may still be running (at most one)."""
        self._cv = threading.Condition()
        self._inbox: list[_Command] = []
        self._stopping = False
        self._pending: StepOutcome | None = None
        """Step k's outcome, waiting to be handed to the loop when step k+1 launches."""
        self._thread = threading.Thread(
            target=self._run, name=f"batchmaker-{self.device}", daemon=True
        )
        self.stats = WorkerStats()
        self.plan_times: list[tuple[StepPlan, float]] | None = None
        """When a list, each plan run on a chosen kernel (no trial) and the seconds of its
        whole step (schedule, execute, update), as ``batchmaker profile`` times its grid:
        how the served engine's plans compare with the profile's (``measure_host``). With
        overlap the host's part of a step hides behind the device's, so it is the plan's
        device seconds instead."""

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: SchedRequest) -> None:
        self._post(_Command(request))

    def abort(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED) -> None:
        self._post(_Command(None, request_id, reason))

    def call(self, fn: Callable[[], None]) -> concurrent.futures.Future[None]:
        """Run ``fn`` on the worker thread at the next step boundary, or here and now when
        the thread is not running. The scheduler and executor are the thread's alone, so
        changing what they serve must go through here."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cv:
            if self._thread.is_alive() and not self._stopping:
                self._inbox.append(_Command(None, call=fn, done=done))
                self._cv.notify()
                return done
        _run_call(_Command(None, call=fn, done=done))
        return done

    def snapshot(self) -> QueueSnapshot:
        """The scheduler's requests, queues and slots, read from any thread without a lock.

        For metrics scrapes, benchmarks and tests. Like ``stats``, it is racy but
        consistent enough: each number is read whole (ints and C-level copies under the
        GIL) though the step loop may be mid-step, so the step loop pays nothing and a
        scrape never waits for a long step.
        """
        sched = self.scheduler
        pools = list(sched.pools.items())
        return QueueSnapshot(
            num_live=sched.num_live,
            num_queued=sched.num_queued,
            queue_depths=sched.queue_depths(),
            free_slots={name: p.num_free for name, p in pools},
            slot_capacity={name: p.capacity for name, p in pools},
        )

    def wake(self) -> None:
        """Re-read the scheduler's timers now. A clock that jumps (a test's ``ManualClock``)
        does not wake a worker waiting for a deadline; whoever moves it calls this."""
        with self._cv:
            self._cv.notify()

    def stop(self) -> None:
        """Abort whatever is live (SHUTDOWN) and end the thread; returns without waiting."""
        with self._cv:
            self._stopping = True
            self._cv.notify()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end; once it has, let go of ``deliver``.

        ``deliver`` is the engine's bound method, and the engine holds this worker: a
        cycle, which the engine froze with the heap when it started (``runtime/heap.py``),
        so the collector would never free it. Broken here, a shut-down engine, its
        executors' weights and state pools included, is freed by reference counting
        when its last user drops it: 157 MiB of the benchmark model per engine, which a
        process that runs engine after engine (bench-slo runs seven) otherwise kept."""
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._deliver = _ended

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called: the thread ends at its next step boundary."""
        return self._stopping

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _post(self, cmd: _Command) -> None:
        with self._cv:
            self._inbox.append(cmd)
            self._cv.notify()

    def _wait_for_work(self, idle: bool) -> tuple[list[_Command], bool]:
        """Block until a command arrives, work is ready, or a scheduler timer is due.

        ``idle``: the last ``schedule()`` found nothing to run, so wait for news even if
        the scheduler claims ready work; a policy bug then stalls instead of spinning.
        """
        sched = self.scheduler
        with self._cv:
            while not self._inbox and not self._stopping and (idle or not sched.has_ready_work):
                wake = sched.next_wakeup()
                if wake is None:
                    self._cv.wait()
                    continue
                delay = wake - sched.clock.now()
                if delay <= 0:
                    break
                self._cv.wait(delay)
                idle = False
            inbox, self._inbox = self._inbox, []
            return inbox, self._stopping

    def _apply(self, inbox: list[_Command]) -> None:
        sched = self.scheduler
        for cmd in inbox:
            if cmd.call is not None:
                _run_call(cmd)
                continue
            if cmd.add is None:
                sched.abort(cmd.abort_id, cmd.reason)
                continue
            try:
                sched.add_request(cmd.add)
            except Exception as exc:  # the engine's accounting should make this unreachable
                log.exception("scheduler refused request %s", cmd.add.request_id)
                cmd.add.finish_reason = FinishReason.FAILED
                self._deliver(StepOutcome(finished=[cmd.add]), exc)

    def _run(self) -> None:
        """The thread's body: the step loop, kept alive through unexpected errors.

        An exception outside the executor (a scheduler or graph bug) would otherwise
        end the thread and leave every live stream waiting forever. Instead the live
        requests of this device fail with INTERNAL, the error is logged, and the loop
        starts again for new requests.
        """
        while True:
            try:
                self._loop()
                return
            except Exception as exc:
                log.exception(
                    "device worker %s: unexpected error; failing its live requests", self.device
                )
                self.stats.num_internal_errors += 1
                try:
                    self._settle()
                    self._deliver_pending()
                    self.scheduler.abort_all(FinishReason.FAILED)
                    self._deliver(self.scheduler.take_outcome(), exc)
                except Exception:
                    log.exception("device worker %s: could not fail its live requests", self.device)
                    return

    def _loop(self) -> None:
        """Wait for work, take the commands that arrived, step; until told to stop."""
        idle = False
        while True:
            inbox, stopping = self._wait_for_work(idle)
            if stopping or any(cmd.call is not None for cmd in inbox):
                # A call changes what the device serves: never under a plan it still runs.
                self._settle()
            self._apply(inbox)
            # Its calls hold what they changed (an unloaded model's cells, through the
            # closure): drop them now, not when the next command replaces them.
            del inbox
            if stopping:
                self._deliver_pending()
                self.scheduler.abort_all(FinishReason.SHUTDOWN)
                self._deliver(self.scheduler.take_outcome(), None)
                return
            idle = not self.step()

    def step(self) -> bool:
        """One step, as vLLM's ``EngineCore.step()`` reads: schedule, execute, update,
        deliver. Returns whether a plan ran (``False``: nothing to run now).

        Delivery is deferred by one step: step k's outcome goes to the event loop when
        step k+1's kernel is about to start (the executor's ``on_launch``), so the loop's
        Python work (fanning outputs out to streams) runs while this thread is inside
        long torch ops without the GIL, instead of contending with scheduling, gather
        and scatter. Measured, the gather alone lost 0.3 ms a step to the GIL otherwise.
        Outcomes keep their order, and none waits longer than one schedule and gather:
        with no next step to carry it, the outcome goes at once.
        """
        if self._overlapping is not None:
            return self._step_overlapped(self._overlapping)
        sched = self.scheduler
        t_step = time.perf_counter()
        plan = sched.schedule()
        if plan is None:
            self._deliver_pending()
            outcome = sched.take_outcome()  # expiries found by schedule()
            if outcome:
                self._deliver(outcome, None)
            return False
        handoff = _Handoff(self._deliver, self._pending)
        self._pending = None
        t0 = time.perf_counter()
        # The scheduler learns plan costs in its own clock's seconds (the same as wall
        # time when live), so a manual clock teaches it what the simulator would.
        c0 = sched.clock.now()
        try:
            result = self.executor.execute(plan, handoff)
        except Exception as exc:
            handoff()
            self._failed(plan, sched.fail_step(plan), exc)
            return True
        handoff()  # in case the executor never called it
        self._record(plan, time.perf_counter() - t0)
        if result.kernel_trial:
            self.stats.num_trial_plans += 1
        else:
            sched.observe(plan, sched.clock.now() - c0)
        outcome = sched.update_from_output(plan, result)
        times = self.plan_times  # read once: another thread may swap it out
        if times is not None and not result.kernel_trial:
            times.append((plan, time.perf_counter() - t_step))
        if outcome:
            self._pending = outcome
        if not sched.has_ready_work:
            self._deliver_pending()  # no next step will carry it
        return True

    def _step_overlapped(self, executor: OverlappingExecutor) -> bool:
        """``step`` with the host's work overlapped with the device's, as vLLM's async
        scheduling does: queue plan k, then (while the device runs it) wait for plan k-1,
        hand its outcome to the loop, and update the scheduler after plan k *before* its
        results are back, so the next call plans k+1 while the device is still busy.

        Updating early is exact for every plan whose rows' next nodes do not depend on what
        it computes: chains and encoders (inputs known up front) and trees. The scheduler
        keeps only a reference to the result, which the loop reads after ``wait``. A plan
        of a cell that feeds its tokens back (``feeds_back``: decoders) is waited for
        before the update, as without overlap. A slot freed by plan k's update may be taken
        by plan k+1; the device runs plans in order, so k's writes come first.

        The device's time per plan (events around it) is what the stats and the
        scheduler's costs learn: with the host hidden behind the device, a plan costs the
        device's time.
        """
        sched = self.scheduler
        plan = sched.schedule()
        if plan is None:
            self._settle()
            outcome = sched.take_outcome()  # expiries found by schedule()
            if outcome:
                self._deliver(outcome, None)
            return False
        try:
            launched = executor.launch(plan)
        except Exception as exc:
            self._settle()
            self._failed(plan, sched.fail_step(plan), exc)
            return True
        self._settle()  # plan k-1: the device ran it while this one was planned and queued
        if executor.feeds_back(plan.cell_type):
            try:
                seconds = launched.wait()
            except Exception as exc:
                self._failed(plan, sched.fail_step(plan), exc)
                return True
            self._learn(plan, launched.result, seconds)
            outcome = sched.update_from_output(plan, launched.result)
            if outcome:
                self._deliver(outcome, None)
            return True
        outcome = sched.update_from_output(plan, launched.result)
        self._inflight = _InFlight(plan, launched, outcome)
        if not sched.has_ready_work:
            self._settle()  # no next plan to overlap with: its outcome must not wait
        return True

    def _settle(self) -> None:
        """Wait for the plan in flight, if any, learn its cost and deliver its outcome.

        If the device failed it, its requests fail with INTERNAL, those the early update
        already ended included (their outcome was not delivered yet, so nobody saw them
        end well), and its outputs are dropped unread."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        plan, launched, outcome = inflight.plan, inflight.launched, inflight.outcome
        try:
            seconds = launched.wait()
        except Exception as exc:
            for request in outcome.finished:
                if request.finish_reason is not None and not request.finish_reason.is_error:
                    request.finish_reason = FinishReason.FAILED
            failed = self.scheduler.fail_step(plan)  # rows still live, and ended ones
            self._failed(plan, StepOutcome(finished=outcome.finished + failed.finished), exc)
            return
        self._learn(plan, launched.result, seconds)
        if outcome:
            self._deliver(outcome, None)

    def _learn(self, plan: StepPlan, result: StepResult, seconds: float) -> None:
        """The stats and the scheduler's plan costs, after an overlapped plan ran."""
        self._record(plan, seconds)
        if result.kernel_trial:
            self.stats.num_trial_plans += 1
        else:
            self.scheduler.observe(plan, seconds)
        times = self.plan_times
        if times is not None and not result.kernel_trial:
            times.append((plan, seconds))

    def _failed(self, plan: StepPlan, outcome: StepOutcome, exc: BaseException) -> None:
        """The device raised on ``plan``: log it, count it, and fail ``outcome``'s requests
        with ``exc`` (INTERNAL), whichever path ran the plan."""
        log.error("cell %s failed on a batch of %d", plan.cell_type, plan.batch_size, exc_info=exc)
        self.stats.num_failed_steps += 1
        self._deliver(outcome, exc)

    def _deliver_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._deliver(pending, None)

    def _record(self, plan: StepPlan, seconds: float) -> None:
        stats = self.stats
        stats.busy_seconds += seconds
        stats.num_steps += 1
        cts = stats.per_cell_type.get(plan.cell_type)
        if cts is None:
            cts = stats.per_cell_type[plan.cell_type] = CellTypeStats()
        real = plan.num_real
        cell_steps = real if plan.steps is None else plan.num_cell_steps
        cts.num_steps += plan.num_steps
        cts.num_plans += 1
        cts.num_rows += cell_steps
        cts.num_batch_rows += real
        cts.num_padding_rows += plan.num_computed_steps - cell_steps
        cts.batch_size_counts[bisect.bisect_left(BATCH_SIZE_BUCKETS, real)] += 1
        cts.steps_per_plan_counts[bisect.bisect_left(STEPS_PER_PLAN_BUCKETS, plan.num_steps)] += 1


def _run_call(cmd: _Command) -> None:
    """Run ``cmd.call`` even if its caller stopped waiting (the change must not half-happen),
    then resolve ``cmd.done``.

    The call is taken out of the command and dropped before ``done`` is resolved: resolving
    it can hand the GIL to the event loop (the wake-up is a write to its self-pipe), which
    may go on to collect an unloaded model's garbage and refreeze the heap while this thread
    still held the call's closure, and with it the model's cells, which would then be
    frozen alive for good."""
    fn, cmd.call = cmd.call, None
    done = cmd.done
    assert fn is not None
    assert done is not None
    error: BaseException | None = None
    try:
        fn()
    except Exception as exc:
        error = exc
    del fn
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # the waiter cancelled
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class _Handoff:
    """Delivers one outcome, once, whenever first called."""

    __slots__ = ("_deliver", "_outcome")

    def __init__(self, deliver: Deliver, outcome: StepOutcome | None) -> None:
        self._deliver = deliver
        self._outcome = outcome

    def __call__(self) -> None:
        outcome, self._outcome = self._outcome, None
        if outcome is not None:
            self._deliver(outcome, None)
