"""The batcher on its own, with a recording runner: which requests share a batch, when a batch
leaves, what a full queue, a timeout, a cancellation and a failing engine do."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kiln.serve.batcher import Batcher, Pending
from kiln.serve.errors import ServeError, Unavailable
from kiln.serve.model_config import Scheduling
from kiln.serve.stats import ModelStats


def _scheduling(**changes) -> Scheduling:
    settings = dict(max_batch_size=8, dynamic=True, preferred=(), max_delay_ns=0,
                    max_queue_size=64, default_timeout_ns=0, allow_timeout_override=False,
                    reject_on_timeout=True)
    settings.update(changes)
    return Scheduling(**settings)


class Recorder:
    """A runner that returns 3x + 1 and records each batch's rows (optionally waiting for a
    gate first, so tests can fill the queue while the one instance is busy)."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.fail = fail

    def __call__(self, feeds):
        if self.gate is not None:
            self.gate.wait(10)
        x = feeds["x"]
        self.batches.append(x.shape[0])
        if self.fail:
            raise RuntimeError("kernel exploded")
        return {"y": x * 3 + 1}


def _request(rows: int, width: int = 4, seed: int = 0, **kw) -> tuple[Pending, threading.Event]:
    x = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    finished = threading.Event()
    pending = Pending({"x": x}, rows, (("x", (width,)),), done=lambda p: finished.set(), **kw)
    return pending, finished


def _wait(events, timeout=10):
    for event in events:
        assert event.wait(timeout), "a request never finished"


def _run(batcher, requests):
    for pending, _ in requests:
        batcher.submit(pending)
    _wait([f for _, f in requests])


def test_requests_batch_up_to_max_and_outputs_split_back():
    gate = threading.Event()
    runner = Recorder(gate)
    batcher = Batcher("m", _scheduling(max_batch_size=8), [runner], ModelStats())
    first = _request(1, seed=99)
    batcher.submit(first[0])  # occupies the only instance until the gate opens
    time.sleep(0.05)
    rest = [_request(rows, seed=i) for i, rows in enumerate([2, 3, 3, 1, 2])]
    for pending, _ in rest:
        batcher.submit(pending)
    gate.set()
    _wait([first[1]] + [f for _, f in rest])
    # 2+3+3 = 8 fills a batch; 1+2 go together next
    assert runner.batches == [1, 8, 3]
    for pending, _ in [first, *rest]:
        assert pending.error is None
        np.testing.assert_array_equal(pending.outputs["y"], pending.inputs["x"] * 3 + 1)
    batcher.close()


def test_only_equal_shapes_share_a_batch():
    gate = threading.Event()
    runner = Recorder(gate)
    batcher = Batcher("m", _scheduling(), [runner], ModelStats())
    blocker = _request(1)
    batcher.submit(blocker[0])
    time.sleep(0.05)
    wide = [_request(1, width=6, seed=i) for i in range(3)]
    narrow = [_request(1, width=4, seed=10 + i) for i in range(2)]
    for pending, _ in [wide[0], narrow[0], wide[1], narrow[1], wide[2]]:
        batcher.submit(pending)
    gate.set()
    _wait([blocker[1]] + [f for _, f in wide + narrow])
    assert runner.batches == [1, 3, 2]
    for pending, _ in wide + narrow:
        np.testing.assert_array_equal(pending.outputs["y"], pending.inputs["x"] * 3 + 1)
    batcher.close()


def test_delay_waits_for_the_preferred_size_then_cuts_to_one():
    runner = Recorder()
    scheduling = _scheduling(preferred=(2, 4), max_delay_ns=300_000_000)
    batcher = Batcher("m", scheduling, [runner], ModelStats())
    started = time.monotonic()
    requests = [_request(1, seed=i) for i in range(3)]
    _run(batcher, requests)
    # three arrive at once: the largest preferred size they make is 2, after the delay;
    # the third then waits its own delay and goes alone
    assert runner.batches == [2, 1]
    assert time.monotonic() - started >= 0.3
    batcher.close()


def test_reaching_the_largest_preferred_size_does_not_wait():
    runner = Recorder()
    batcher = Batcher("m", _scheduling(preferred=(4,), max_delay_ns=5 * 10**9), [runner],
                      ModelStats())
    started = time.monotonic()
    _run(batcher, [_request(2, seed=i) for i in range(2)])
    assert runner.batches == [4]
    assert time.monotonic() - started < 2
    batcher.close()


def test_without_dynamic_batching_each_request_runs_alone():
    runner = Recorder()
    stats = ModelStats()
    batcher = Batcher("m", _scheduling(dynamic=False), [runner], stats)
    _run(batcher, [_request(rows, seed=rows) for rows in (1, 2, 3)])
    assert sorted(runner.batches) == [1, 2, 3]
    assert stats.execution_count == 3
    batcher.close()


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()
    batcher = Batcher("m", _scheduling(max_queue_size=2, dynamic=False), [Recorder(gate)],
                      ModelStats())
    running = _request(1)
    batcher.submit(running[0])
    time.sleep(0.05)  # taken by the instance: the queue is empty again
    queued = [_request(1, seed=i) for i in range(2)]
    for pending, _ in queued:
        batcher.submit(pending)
    with pytest.raises(Unavailable, match="queue is full"):
        batcher.submit(_request(1)[0])
    gate.set()
    _wait([running[1]] + [f for _, f in queued])
    assert all(p.error is None for p, _ in queued)
    batcher.close()


def test_queue_timeout_rejects_and_cancelled_requests_never_run():
    gate = threading.Event()
    runner = Recorder(gate)
    batcher = Batcher("m", _scheduling(dynamic=False), [runner], ModelStats())
    blocker = _request(1)
    batcher.submit(blocker[0])
    time.sleep(0.05)
    timed = _request(2, timeout_ns=50_000_000)
    gone = _request(3, cancelled=lambda: True)
    kept = _request(1)
    for pending, _ in (timed, gone, kept):
        batcher.submit(pending)
    time.sleep(0.1)  # past the 50 ms timeout while the instance is busy
    gate.set()
    _wait([blocker[1], timed[1], gone[1], kept[1]])
    assert isinstance(timed[0].error, Unavailable) and "timed out" in str(timed[0].error)
    assert gone[0].error is not None and gone[0].error.reason == "CANCELED"
    assert kept[0].error is None
    assert runner.batches == [1, 1]  # neither the expired nor the cancelled one ran
    batcher.close()


def test_a_failing_engine_fails_its_batch_and_the_worker_goes_on():
    runner = Recorder(fail=True)
    batcher = Batcher("m", _scheduling(dynamic=False), [runner], ModelStats())
    first = _request(1)
    _run(batcher, [first])
    assert isinstance(first[0].error, ServeError)
    assert first[0].error.code == "INTERNAL" and "kernel exploded" in str(first[0].error)
    runner.fail = False
    second = _request(2)
    _run(batcher, [second])
    assert second[0].error is None
    batcher.close()


def test_instances_run_in_parallel():
    started = threading.Barrier(2, timeout=5)

    def runner(feeds):
        started.wait()  # both instances must be inside a run at once
        return {"y": feeds["x"]}

    batcher = Batcher("m", _scheduling(dynamic=False), [runner, runner], ModelStats())
    requests = [_request(1, seed=i) for i in range(2)]
    _run(batcher, requests)
    assert all(p.error is None for p, _ in requests)
    batcher.close()


def test_close_runs_what_is_queued_then_refuses():
    runner = Recorder()
    batcher = Batcher("m", _scheduling(max_delay_ns=10**10, preferred=(8,)), [runner],
                      ModelStats())
    queued = _request(1)
    batcher.submit(queued[0])
    batcher.close(timeout_s=5)  # does not wait out the 10 s delay
    assert queued[1].is_set() and queued[0].error is None
    with pytest.raises(Unavailable, match="unloaded"):
        batcher.submit(_request(1)[0])
