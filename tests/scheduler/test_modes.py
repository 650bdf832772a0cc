"""Choosing a scheduler by mode (``make_scheduler``) and ending a request at its output cap.

The mode decides the policy, so each mode must build the scheduler that runs that
policy; and a request cut by ``max_steps`` must say so (``LENGTH``) in every mode,
because that is the finish reason the client sees.
"""

from __future__ import annotations

import pytest
from factories import CELL, FakeResult, create_requests

from scheduler import (
    MODES,
    CellTypeSpec,
    CellularScheduler,
    ChainGraph,
    FinishReason,
    ManualClock,
    PaddedScheduler,
    PolicyConfig,
    SchedRequest,
    SchedulerConfig,
    make_scheduler,
)


def build(mode: str, **overrides: object) -> CellularScheduler | PaddedScheduler:
    config = SchedulerConfig(mode=mode, max_batch_requests=3, batch_timeout_s=0.0, **overrides)
    sched = make_scheduler(config, [CellTypeSpec(CELL, 4, CELL)], {CELL: 16}, ManualClock())
    assert isinstance(sched, CellularScheduler | PaddedScheduler)
    return sched


def test_each_mode_builds_its_policy() -> None:
    policy = PolicyConfig(finishing_first=False, max_wait_steps=3)
    cellular = build("cellular", policy=policy, max_num_live_requests=7)
    assert isinstance(cellular, CellularScheduler)
    assert cellular.policy is policy
    assert cellular.max_num_live_requests == 7

    padded = build("padded")
    assert isinstance(padded, PaddedScheduler)
    assert (padded.max_batch_requests, padded.stream, padded.all_ready) == (3, False, False)

    level = build("level")
    assert isinstance(level, PaddedScheduler)
    assert (level.max_batch_requests, level.stream, level.all_ready) == (3, False, True)

    none = build("none")
    assert isinstance(none, PaddedScheduler)
    assert (none.max_batch_requests, none.batch_timeout, none.stream) == (1, 0.0, True)


def test_an_unknown_mode_is_refused_naming_the_modes() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        SchedulerConfig(mode="fifo")


def run_to_end(sched: CellularScheduler | PaddedScheduler) -> dict[str, FinishReason]:
    ended: dict[str, FinishReason] = {}
    for _ in range(100):
        plan = sched.schedule()
        if plan is None:
            break
        for r in sched.update_from_output(plan, FakeResult(plan)).finished:
            assert r.finish_reason is not None
            ended[r.request_id] = r.finish_reason
    ended.update((r.request_id, r.finish_reason) for r in sched.take_outcome().finished)
    assert sched.num_live == 0
    return ended


@pytest.mark.parametrize("mode", MODES)
def test_a_request_cut_by_its_cap_ends_with_length_and_the_others_complete(mode: str) -> None:
    sched = build(mode)
    (whole,) = create_requests(1, lengths=3, prefix="whole")
    capped = SchedRequest("capped", ChainGraph(CELL, [5, 6, 7, 8], CELL, max_steps=2))
    exact = SchedRequest("exact", ChainGraph(CELL, [5, 6], CELL, max_steps=2))
    for r in (whole, capped, exact):
        sched.add_request(r)
    ended = run_to_end(sched)
    assert ended == {
        "whole0": FinishReason.COMPLETED,
        "capped": FinishReason.LENGTH,
        # A cap the request would not have exceeded does not cut it.
        "exact": FinishReason.COMPLETED,
    }
    assert capped.num_emitted == 2


def test_finish_reasons_split_into_clean_ends_and_errors() -> None:
    clean = {r for r in FinishReason if not r.is_error}
    assert clean == {FinishReason.COMPLETED, FinishReason.LENGTH}
    # A StrEnum: clients and logs see the plain value.
    assert FinishReason.LENGTH == "length"
    assert f"{FinishReason.COMPLETED}" == "completed"
