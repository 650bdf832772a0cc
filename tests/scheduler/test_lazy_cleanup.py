"""What finished requests leave behind in the scheduler's heaps stays bounded, and ending
one costs O(1) amortised, not a rebuild per request.

- The deadline heap: a request that completes long before its deadline leaves a dead
  entry; they are dropped all at once when they are half the heap, so a server whose
  clients set hour-long deadlines holds about as many entries as requests are live
  (at 100 req/s that was 360k dead requests, each holding its inputs).
- The ready queues: a cancelled request's ready nodes are marked dead, not removed, and
  skipped when popped; a mass disconnect of n requests was n rebuilds of the heap.
"""

from __future__ import annotations

from factories import FakeResult, create_requests, make_cellular

from scheduler import FinishReason, ManualClock
from scheduler.queues import COMPACT_MIN, ReadyQueue


def test_dead_deadline_entries_are_dropped_once_they_are_half_the_heap() -> None:
    clock = ManualClock()
    sched = make_cellular(clock=clock, capacity=64, max_batch=64)
    most = 0
    for wave in range(40):
        batch = create_requests(
            32, lengths=1, deadline=3600.0, prefix=f"w{wave}-", first_index=wave * 32
        )
        for r in batch:
            sched.add_request(r)
        plan = sched.schedule()
        assert plan is not None
        out = sched.update_from_output(plan, FakeResult(plan))
        assert len(out.finished) == 32  # one step each: all done, an hour early
        most = max(most, len(sched._deadlines))
    # 1,280 requests went through; the heap never held more than a few waves of them.
    assert most <= 2 * max(COMPACT_MIN, 32) + 32
    # What is still there is dead, and next_wakeup clears it.
    assert sched.next_wakeup() is None
    assert not sched._deadlines


def test_expiry_still_fires_with_compaction_between() -> None:
    clock = ManualClock()
    sched = make_cellular(clock=clock, capacity=256, max_batch=256)
    done = create_requests(200, lengths=1, deadline=50.0, prefix="done")
    late = create_requests(3, lengths=10, deadline=10.0, prefix="late")
    for r in [*done, *late]:
        sched.add_request(r)
    plan = sched.schedule()
    assert plan is not None
    sched.update_from_output(plan, FakeResult(plan))  # the 200 finish: compaction runs
    assert all(r.finished for r in done)
    clock.set(11.0)
    assert sched.next_wakeup() == 10.0
    sched.schedule()
    out = sched.take_outcome()
    assert {r.request_id for r in out.finished} == {r.request_id for r in late}
    assert all(r.finish_reason is FinishReason.DEADLINE_EXCEEDED for r in late)
    assert sched.next_wakeup() is None


def test_a_cancelled_requests_nodes_are_skipped_not_rebuilt() -> None:
    queue = ReadyQueue("cell")
    requests = create_requests(10, lengths=1)
    for seq, r in enumerate(requests):
        r.seq = seq
        queue.push(r, 0, r.graph.node(0))
    heap = queue._heap
    for r in requests[2:5]:
        r.finish_reason = FinishReason.CANCELLED
        assert queue.remove_request(r) == 1
    assert queue._heap is heap  # nothing rebuilt: three dead entries among ten
    assert len(queue) == 7
    got = [r.request_id for r, _, _ in queue.pop(4)]
    assert got == ["req0", "req1", "req5", "req6"]  # the dead ones skipped, order kept
    assert len(queue) == 3
    assert [r.request_id for r, _, _ in queue.pop(10)] == ["req7", "req8", "req9"]
    assert len(queue) == 0
    assert not queue._heap


def test_dead_entries_are_compacted_when_they_are_half_the_queue() -> None:
    queue = ReadyQueue("cell")
    n = 4 * COMPACT_MIN
    requests = create_requests(n, lengths=1)
    for seq, r in enumerate(requests):
        r.seq = seq
        queue.push(r, 0, r.graph.node(0))
    rebuilt = 0
    for r in requests[: n - 10]:
        heap = queue._heap
        r.finish_reason = FinishReason.CANCELLED
        queue.remove_request(r)
        rebuilt += queue._heap is not heap
    assert 1 <= rebuilt <= 3  # a few rebuilds for n - 10 cancels, not one each
    assert len(queue) == 10
    assert len(queue._heap) <= 10 + max(COMPACT_MIN, len(queue._heap) // 2)
    assert [r.request_id for r, _, _ in queue.pop(20)] == [f"req{i}" for i in range(n - 10, n)]
