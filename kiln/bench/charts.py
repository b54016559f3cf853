"""The report's charts, drawn with matplotlib's object API on the Agg canvas (no display,
no global pyplot state):

- latency.png: latency distribution per engine (box: quartiles, whiskers: p1..p99);
- throughput.png: throughput against batch size (or per engine, without a sweep);
- memory.png: host memory added and device memory peak per engine;
- accuracy_speed.png: median latency beside the largest difference from the baseline.
"""

from __future__ import annotations

from pathlib import Path

from kiln.bench.benchmark import BenchmarkResult
from kiln.errors import KilnError


def _figure(width: float = 7.0, height: float = 4.0, ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise KilnError("the report's charts need matplotlib, which is not installed",
                        hint="pip install matplotlib (or kiln[bench])") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _ok_runs(result: BenchmarkResult, batch):
    return [r for r in result.runs if r.status == "ok" and r.batch == batch and r.trace]


def latency_chart(result: BenchmarkResult, path: Path) -> Path:
    batch = result.batches[0]
    runs = _ok_runs(result, batch)
    fig, ax = _figure(max(6.0, 1.3 * len(runs) + 2))
    if runs:
        ax.boxplot([r.latencies_ms for r in runs], whis=(1, 99), showfliers=False,
                   tick_labels=[r.peer for r in runs])
        ax.set_ylabel("latency (ms)")
        _log_if_wide(ax, [r.summary.latency.median for r in runs], "y")
    else:
        ax.text(0.5, 0.5, "no engine ran", ha="center", va="center")
    suffix = f" (batch {batch})" if batch is not None else ""
    ax.set_title(f"Latency distribution per engine{suffix}")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def throughput_chart(result: BenchmarkResult, path: Path) -> Path:
    fig, ax = _figure()
    batches = [b for b in result.batches if b is not None]
    if batches:
        for peer in result.peers:
            points = [(b, run.items_per_second) for b in batches
                      if (run := result.run_of(peer, b)) and run.items_per_second]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=peer)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        _log_if_wide(ax, [y for line in ax.get_lines() for y in line.get_ydata()], "y")
        ax.set_xlabel("batch size")
        ax.set_ylabel("throughput (items/s)")
        ax.set_title("Throughput against batch size")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    else:
        runs = _ok_runs(result, None)
        ax.bar([r.peer for r in runs], [r.summary.throughput_qps for r in runs])
        ax.set_ylabel("throughput (qps)")
        _log_if_wide(ax, [r.summary.throughput_qps for r in runs], "y")
        ax.set_title("Throughput per engine (the model's batch)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def memory_chart(result: BenchmarkResult, path: Path) -> Path:
    runs = [r for r in _ok_runs(result, result.batches[0])]
    fig, ax = _figure(max(6.0, 1.3 * len(runs) + 2))
    x = list(range(len(runs)))
    host = [(r.memory.get("host_added_bytes") or 0) / 2**20 for r in runs]
    device = [(r.memory.get("device_peak_bytes") or 0) / 2**20 for r in runs]
    both = any(device)
    ax.bar([i - 0.2 * both for i in x], host, width=0.4 if both else 0.6,
           label="host memory added (RSS)")
    if both:
        ax.bar([i + 0.2 for i in x], device, width=0.4, label="device memory peak")
    ax.set_xticks(x, [r.peer for r in runs])
    ax.set_ylabel("MiB")
    ax.set_title("Memory per engine")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def accuracy_speed_chart(result: BenchmarkResult, path: Path) -> Path:
    runs = _ok_runs(result, result.batches[0])
    fig, (left, right) = _figure(max(9.0, 2.0 * len(runs) + 3), 4.0, ncols=2)
    names = [r.peer for r in runs]
    medians = [r.summary.latency.median for r in runs]
    left.bar(names, medians, color="tab:blue")
    left.set_ylabel("median latency (ms)")
    _log_if_wide(left, medians, "y")
    left.set_title("Speed (lower is better)")
    diffs = [(r.accuracy or {}).get("max_abs_diff") for r in runs]
    shown = [d if d and d > 0 else 0.0 for d in diffs]
    right.bar(names, shown, color="tab:orange")
    positive = [d for d in shown if d > 0]
    if positive:
        right.set_yscale("log")
        right.set_ylim(min(positive) / 10, max(positive) * 10)
    reference = result.baseline or "the first peer"
    for i, (name, d) in enumerate(zip(names, diffs)):
        if d:
            right.annotate(f"{d:.1e}", (i, d), ha="center", va="bottom", fontsize=8)
        else:  # nothing to draw on a log axis: say why at the bottom
            label = "reference" if name == reference else ("exact" if d == 0 else "n/a")
            right.annotate(label, (i, 0.02), xycoords=("data", "axes fraction"),
                           ha="center", va="bottom", fontsize=8)
    right.set_ylabel(f"max |difference| vs {reference}")
    right.set_title("Accuracy (lower is better)")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


def _log_if_wide(ax, values: list[float], axis: str) -> None:
    """A log scale when the values span more than 30x, so small bars stay visible."""
    positive = [v for v in values if v and v > 0]
    if len(positive) > 1 and max(positive) / min(positive) > 30:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


CHARTS = {
    "latency": ("latency.png", latency_chart),
    "throughput": ("throughput.png", throughput_chart),
    "memory": ("memory.png", memory_chart),
    "accuracy_speed": ("accuracy_speed.png", accuracy_speed_chart),
}


def draw_all(result: BenchmarkResult, directory: Path) -> dict[str, str]:
    return {key: draw(result, directory / name).name for key, (name, draw) in CHARTS.items()}
