"""Where a kiln engine's time goes on the GPU, kernel by kernel, as it really runs (CUDA
graph replays included: the per-layer profile runs layers eagerly, this does not).

Builds the engine as bench/peers.py does, runs it under torch.profiler, and prints the
kernels grouped by name with their share of the device time, beside eager PyTorch's.

    PYTHONPATH=. python bench/kernel_profile.py --model vit --batch 64 [--precision fp16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import export, make_model

from kiln.build import BuilderConfig, build_engine
from kiln.runtime import ExecutionContext


def kernel_table(fn, runs: int, label: str, top: int) -> None:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time_total for e in events) or 1.0
    print(f"\n{label}: {total / runs / 1000:.3f} ms of kernels per run, "
          f"{sum(e.count for e in events) // runs} kernels per run")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:top]:
        share = 100 * e.device_time_total / total
        print(f"  {e.device_time_total / runs / 1000:8.3f} ms {share:5.1f}%"
              f"  x{e.count // runs:4d}  {e.key[:110]}")


def timeline(fn, runs: int = 5, top: int = 14, pause_s: float = 0.002) -> list[str]:
    """The engine's kernels as they ran inside its CUDA graph, run by run (a pause between
    runs tells them apart): span, time with a kernel running and the idle gaps, the kernels
    by name with their in-engine durations, and the largest gaps with the kernels on either
    side. The per-layer profile replays each layer alone (inputs and weights hot in L2);
    this says where an engine's extra time goes. Kernels launched with programmatic
    dependent launch start early and wait, so their durations overlap the kernel before:
    busy time is the union of the intervals."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
            torch.cuda.synchronize()
            time.sleep(pause_s)
    kernels = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda k: k[0])
    return timeline_lines(kernels, top, split_us=pause_s * 1e6 / 2)


def timeline_lines(kernels: list[tuple[float, float, str]], top: int,
                   split_us: float) -> list[str]:
    """timeline()'s table from (start us, end us, name) sorted by start; a run ends where
    the device idles longer than split_us."""
    groups: list[list[tuple]] = []
    end = float("-inf")
    for k in kernels:
        if k[0] - end > split_us:
            groups.append([])
        groups[-1].append(k)
        end = max(end, k[1])
    runs = len(groups)
    span = busy = 0.0
    by_name: dict[str, list[float]] = {}
    gaps: dict[tuple[str, str], list[float]] = {}
    for g in groups:
        span += max(e for _, e, _ in g) - g[0][0]
        reach = g[0][0]
        previous = g[0][2]
        for s, e, n in g:
            busy += max(0.0, e - max(s, reach))
            if s > reach:
                gaps.setdefault((previous[:50], n[:50]), []).append(s - reach)
            if e > reach:
                reach, previous = e, n
            by_name.setdefault(n[:90], []).append(e - s)
    count = len(kernels) / runs
    lines = [f"{span / runs / 1000:.3f} ms span, {busy / runs / 1000:.3f} ms with a kernel "
             f"running, {count:.0f} kernels, idle {(span - busy) / runs / 1000:.3f} ms "
             f"(mean of {runs} runs)"]
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"  {sum(times) / runs / 1000:7.3f} ms x{len(times) / runs:5.1f}  {name}")
    for (a, b), times in sorted(gaps.items(), key=lambda kv: -sum(kv[1]))[:8]:
        lines.append(f"  idle {sum(times) / runs / 1000:6.3f} ms x{len(times) / runs:5.1f}"
                     f"  {a} -> {b}")
    return lines


def overheads(context: ExecutionContext, feeds: dict) -> None:
    """A run's latency against a bare replay of its CUDA graph, and the parts between:
    the inputs' copies before it (one cudaMemcpyAsync each, or one multi-tensor kernel),
    the outputs' clone after it, the host's time for a run and for a replay, and the
    replay's start-up."""
    from peers import cuda_time

    with torch.inference_mode():
        run_ms = cuda_time(lambda: context.run(feeds))
        graphs = context.graphs
        captured = [g for g in (graphs.graphs.values() if graphs else []) if g is not None]
        line = f"\nkiln run {run_ms:.3f} ms"
        if captured:
            line += ", " + ", ".join(f"{name} {cuda_time(fn):.3f} ms"
                                     for name, fn in _graph_parts(captured[-1], feeds).items())
            line += (f"; host: run {_host_ms(lambda: context.run(feeds)):.3f} ms, replay "
                     f"{_host_ms(captured[-1].graph.replay):.3f} ms; start-up "
                     f"{startup_ms(captured[-1].graph):.3f} ms")
        else:
            line += f", no CUDA graph ({graphs.failures if graphs else 'off'})"
        eager = ExecutionContext(context.engine, cuda_graph=False)
        line += f", eager layers {cuda_time(lambda: eager.run(feeds)):.3f} ms"
    print(line)


def _graph_parts(captured, feeds: dict) -> dict:
    def copies():
        for name, value in feeds.items():
            captured.inputs[name].copy_(value, non_blocking=True)

    replay = captured.graph.replay
    return {"bare graph replay": replay,
            "copies + replay": lambda: (copies(), replay()),
            "one multi-tensor copy + replay": lambda: (captured.load(feeds), replay()),
            "replay + clone": lambda: (replay(), [t.clone() for t in captured.outputs])}


def startup_ms(graph: torch.cuda.CUDAGraph, batch: int = 10) -> float:
    """A replay's latency less its share of `batch` replays issued back to back (whose
    launches overlap the replays before them): the time from the start event to the
    graph's first kernel, and from its last kernel to the end event."""
    from peers import cuda_time

    def back_to_back():
        for _ in range(batch):
            graph.replay()

    return cuda_time(graph.replay) - cuda_time(back_to_back, warmup=2, runs=20) / batch


def _host_ms(fn, runs: int = 50) -> float:
    """The host's time for one call issued to an idle GPU (median)."""
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    torch.cuda.synchronize()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    model, make_inputs, names, dynamic = make_model(args.model)
    inputs = make_inputs(args.batch)
    engine = build_engine(export(model, make_inputs(2), names, dynamic), BuilderConfig(
        precision=args.precision, device="cuda",
        profiles=[{"opt": {n: list(t.shape) for n, t in zip(names, inputs)}}]))
    feeds = {n: t.cuda() for n, t in zip(names, inputs)}
    context = ExecutionContext(engine)
    kernel_table(lambda: context.run(feeds), args.runs, f"kiln {args.precision}", args.top)
    overheads(context, feeds)
    module = model.cuda().half().eval()
    args_half = tuple(t.cuda() if not t.is_floating_point() else t.cuda().half() for t in inputs)
    with torch.inference_mode():
        kernel_table(lambda: module(*args_half), args.runs, "eager fp16", args.top)


if __name__ == "__main__":
    main()
