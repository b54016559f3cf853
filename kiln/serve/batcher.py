"""The scheduler of one model version: a bounded queue, and one worker thread per model
instance that takes requests from it, batches them and runs the engine.

With dynamic batching (Triton's rules), a free instance takes the oldest request and every
later one whose shapes past the batch axis match it, up to max_batch_size rows. It runs
them at once when they reach the largest preferred batch size (max_batch_size when none is
given) or when the oldest has waited max_queue_delay; at the delay it cuts the batch to the
largest preferred size it can make, if any. Without dynamic batching each request runs on
its own. Each instance has its own ExecutionContext and, on a GPU, its own CUDA stream.

The queue is bounded: a request that finds it full is refused at once (Unavailable), so
overload costs neither unbounded memory nor unbounded latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.serve.errors import ServeError, Unavailable
from kiln.serve.model_config import Scheduling
from kiln.serve.stats import ModelStats, Timings

Outputs = dict[str, np.ndarray]
Runner = Callable[[dict[str, np.ndarray]], Outputs]


@dataclass(eq=False)
class Pending:
    """One request in the queue. `done` is called once, from a worker thread, after
    `outputs` or `error` is set."""

    inputs: dict[str, np.ndarray]
    rows: int  # along the batch axis; 1 for a model that does not batch
    key: tuple  # requests share a batch only when their keys are equal
    done: Callable[[Pending], None]
    cancelled: Callable[[], bool] = lambda: False
    timeout_ns: int = 0  # 0: no timeout
    arrived_ns: int = field(default_factory=time.monotonic_ns)
    outputs: Outputs | None = None
    error: ServeError | None = None
    timings: Timings = field(default_factory=Timings)

    def fail(self, error: ServeError) -> None:
        self.error = error
        self.done(self)


class Batcher:
    def __init__(self, model: str, scheduling: Scheduling, runners: list[Runner],
                 stats: ModelStats) -> None:
        self.model = model
        self.scheduling = scheduling
        self.stats = stats
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(runner,), daemon=True,
                                          name=f"kiln-serve-{model}-{i}")
                         for i, runner in enumerate(runners)]
        for thread in self._threads:
            thread.start()

    # ----------------------------------------------------------- called by the front ends
    def submit(self, pending: Pending) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable(f"model {self.model!r} is being unloaded")
            if len(self._queue) >= self.scheduling.max_queue_size:
                raise Unavailable(
                    f"model {self.model!r} is overloaded: its queue is full "
                    f"({self.scheduling.max_queue_size} requests waiting)",
                    hint="retry later, or raise max_queue_size (default_queue_policy) or the "
                    "instance count")
            self._queue.append(pending)
            self._cond.notify()

    def queued(self) -> int:
        return len(self._queue)

    def close(self, timeout_s: float | None = None) -> None:
        """Takes no more requests, runs the ones queued, then stops the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    # ----------------------------------------------------------- worker threads
    def _work(self, runner: Runner) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._execute(runner, batch)

    def _take(self) -> list[Pending] | None:
        s = self.scheduling
        with self._cond:
            while True:
                now = time.monotonic_ns()
                self._drop_stale(now)
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if not s.dynamic:
                    return [self._queue.popleft()]
                batch, full = self._gather()
                ready_at = batch[0].arrived_ns + s.max_delay_ns
                if not (full or self._closed or now >= ready_at):
                    self._cond.wait((ready_at - now) / 1e9)
                    continue
                if not full:
                    batch = _cut_to_preferred(batch, s.preferred)
                chosen = {id(p) for p in batch}
                self._queue = deque(p for p in self._queue if id(p) not in chosen)
                return batch

    def _gather(self) -> tuple[list[Pending], bool]:
        """The oldest request and the later ones that fit with it; full: nothing would be
        gained by waiting (the target size is reached, or the next match does not fit)."""
        s = self.scheduling
        target = s.preferred[-1] if s.preferred else s.max_batch_size
        head = self._queue[0]
        batch, rows = [], 0
        for p in self._queue:
            if p.key != head.key:
                continue
            if rows + p.rows > s.max_batch_size:
                return batch, True
            batch.append(p)
            rows += p.rows
            if rows >= target:
                return batch, True
        return batch, False

    def _drop_stale(self, now: int) -> None:
        """Answers requests whose client went away or whose queue timeout passed."""
        reject = self.scheduling.reject_on_timeout
        keep: deque[Pending] = deque()
        dropped = False
        for p in self._queue:
            if p.cancelled():
                p.fail(ServeError("the client cancelled the request", code="CANCELLED",
                                  reason="CANCELED"))
            elif reject and p.timeout_ns and now - p.arrived_ns > p.timeout_ns:
                p.fail(Unavailable(f"request timed out after waiting "
                                   f"{(now - p.arrived_ns) / 1e6:.1f} ms in the queue of model "
                                   f"{self.model!r} (timeout {p.timeout_ns / 1e6:.1f} ms)"))
            else:
                keep.append(p)
                continue
            dropped = True
        if dropped:
            self._queue = keep

    def _execute(self, runner: Runner, batch: list[Pending]) -> None:
        t0 = time.monotonic_ns()
        rows = sum(p.rows for p in batch)
        try:
            feeds = _stack(batch)
            t1 = time.monotonic_ns()
            outputs = runner(feeds)
            t2 = time.monotonic_ns()
            parts = _split(outputs, batch, rows) if len(batch) > 1 else [outputs]
            t3 = time.monotonic_ns()
        except Exception as exc:  # one failed batch must not stop the worker
            error = exc if isinstance(exc, ServeError) else _engine_error(self.model, exc)
            for p in batch:
                p.fail(error)
            return
        timings = Timings(0, t1 - t0, t2 - t1, t3 - t2)
        self.stats.record_execution(rows, timings)
        for p, out in zip(batch, parts):
            p.timings = Timings(t0 - p.arrived_ns, *_compute(timings))
            p.outputs = out
            p.done(p)


def _compute(t: Timings) -> tuple[int, int, int]:
    return t.compute_input, t.compute_infer, t.compute_output


def _cut_to_preferred(batch: list[Pending], preferred: tuple[int, ...]) -> list[Pending]:
    """The longest prefix whose rows are a preferred batch size; all of it if none is."""
    if not preferred:
        return batch
    rows, best = 0, 0
    for i, p in enumerate(batch, 1):
        rows += p.rows
        if rows in preferred:
            best = i
    return batch[:best] if best else batch


def _stack(batch: list[Pending]) -> dict[str, np.ndarray]:
    if len(batch) == 1:
        return batch[0].inputs
    return {name: np.concatenate([p.inputs[name] for p in batch])
            for name in batch[0].inputs}


def _split(outputs: Outputs, batch: list[Pending], rows: int) -> list[Outputs]:
    bad = [n for n, v in outputs.items() if np.ndim(v) == 0 or v.shape[0] != rows]
    if bad:
        raise ServeError(f"output(s) {', '.join(map(repr, bad))} do not keep the batch axis "
                         f"(a batch of {rows} gave shape(s) "
                         f"{', '.join(str(list(np.shape(outputs[n]))) for n in bad)}), so "
                         "batched requests cannot be told apart",
                         code="INTERNAL", reason="BACKEND",
                         hint="set max_batch_size: 0 for this model")
    bounds = np.cumsum([p.rows for p in batch])[:-1]
    pieces = {name: np.split(value, bounds) for name, value in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(batch))]


def _engine_error(model: str, exc: Exception) -> ServeError:
    if isinstance(exc, KilnError):
        return ServeError(f"model {model!r}: {exc}", reason="BACKEND")
    return ServeError(f"model {model!r} failed to run: {exc}", code="INTERNAL", reason="BACKEND")


def make_runner(context: Any, device: str) -> Runner:
    """Runs an ExecutionContext; on a GPU, on a CUDA stream of its own."""
    if not device.startswith("cuda"):
        return context.run
    stream = torch.cuda.Stream(device=device)

    def run(feeds: dict[str, np.ndarray]) -> Outputs:
        with torch.cuda.stream(stream):
            return context.run(feeds)  # numpy out: the copy back waits for the stream

    return run
