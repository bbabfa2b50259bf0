"""The work queue: one reconcile per bot at a time, nothing lost, backoff, bounded maps."""

from __future__ import annotations

import threading

from kubechat_operator.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_added_many_times_is_handed_out_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert [q.get(), q.get()] == ["a", "b"]
    assert q.sizes()["queued"] == 0


def test_a_key_added_while_processed_comes_back_after_done_not_before() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get() == "a"
    q.add("a")  # a change arrives during the reconcile
    assert q.sizes()["queued"] == 0  # not handed to a second worker meanwhile
    q.done("a")
    assert q.get() == "a"


def test_retries_back_off_exponentially_and_a_success_resets_them() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(base_delay=1, max_delay=5, clock=clock)
    assert [q.retry("a") for _ in range(5)] == [1, 2, 4, 5, 5]
    q.forget("a")
    assert q.retry("a") == 1


def test_a_scheduled_key_is_handed_out_when_due() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("a", 10)
    q.add_after("a", 3)  # the earlier schedule wins
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    clock.now = 3.0
    q.add_after("b", 100)  # any notify makes the waiting worker look at the clock again
    worker.join(timeout=5)
    assert got == ["a"]
    q.close()
    assert q.get() is None


def test_dropping_keys_leaves_nothing_behind() -> None:
    q: WorkQueue[int] = WorkQueue()
    for i in range(1000):
        q.add_after(i, 600)
        q.retry(i)
        q.drop(i)
    sizes = q.sizes()
    assert sizes["waiting"] == sizes["failures"] == 0
    assert sizes["heap"] <= 64 + 2  # stale schedules are compacted away
