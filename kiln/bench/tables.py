"""The peers table: one row per peer (and batch size), as text and as data.

Columns: latency p50/p99, throughput, memory, GPU utilization, build time, the ratio to
the first peer (its median latency over this one's: above 1 is faster) and accuracy
against the first peer. Cells that do not apply say `n/a`; peers that could not run say
why in the last column.
"""

from __future__ import annotations

from typing import Any

from kiln.bench.benchmark import BenchmarkResult, PeerRun
from kiln.bench.summary import percentile


def run_row(result: BenchmarkResult, run: PeerRun) -> dict[str, Any]:
    """The numbers of one run (None where they do not apply)."""
    row: dict[str, Any] = {"peer": run.peer, "precision": run.precision, "batch": run.batch,
                           "status": run.status, "note": run.note, "device": run.device,
                           "build_s": run.build_seconds, "cuda_graph": run.cuda_graph}
    if run.summary is not None:
        ordered = sorted(run.latencies_ms)
        row.update({
            "p50_ms": run.summary.latency.median, "p99_ms": percentile(ordered, 99),
            "mean_ms": run.summary.latency.mean, "qps": run.summary.throughput_qps,
            "items_per_s": run.items_per_second,
            "gpu_compute_median_ms": (run.summary.stats["GPU Compute Time"].median
                                      if run.summary.stats.get("GPU Compute Time") else None),
        })
    row["host_added_bytes"] = run.memory.get("host_added_bytes")
    row["host_peak_bytes"] = run.memory.get("host_peak_bytes")
    row["device_peak_bytes"] = run.memory.get("device_peak_bytes")
    row["gpu_utilization_percent"] = run.memory.get("gpu_utilization_percent")
    row["accuracy"] = run.accuracy
    row["speedup"] = _speedup(result, run)
    return row


def _speedup(result: BenchmarkResult, run: PeerRun) -> float | None:
    base_name = result.baseline
    base = result.run_of(base_name, run.batch) if base_name else None
    if base is None or base.summary is None or run.summary is None:
        return None
    mine = run.summary.latency.median
    return base.summary.latency.median / mine if mine > 0 else None


COLUMNS = ["peer", "precision", "batch", "p50 ms", "p99 ms", "throughput", "speedup",
           "host mem", "device mem", "GPU util", "build s", "max |diff|", "top-1", "note"]


def table_rows(result: BenchmarkResult) -> list[list[str]]:
    sweep = any(b is not None for b in result.batches)
    base = result.baseline or "-"
    rows = []
    for run in result.runs:
        r = run_row(result, run)
        acc = r["accuracy"] or {}
        throughput = (f"{r['items_per_s']:.1f}/s" if sweep and r.get("items_per_s")
                      else _num(r.get("qps"), "{:.1f} qps"))
        note = run.note if run.status != "ok" else ""
        if run.status == "ok" and run.peer == base:
            note = "baseline"
        rows.append([
            run.peer, run.precision, "-" if run.batch is None else str(run.batch),
            _num(r.get("p50_ms"), "{:.3f}"), _num(r.get("p99_ms"), "{:.3f}"), throughput,
            _num(r["speedup"], "{:.3g}x"), _bytes(r["host_added_bytes"]),
            _bytes(r["device_peak_bytes"]) if run.device == "cuda" else "n/a",
            _num(r["gpu_utilization_percent"], "{:.0f}%"),
            _num(r["build_s"], "{:.2f}"),
            _num(acc.get("max_abs_diff"), "{:.2e}"),
            _num(acc.get("top1_agreement"), "{:.1%}"),
            f"{run.status}: {note}" if run.status != "ok" else note,
        ])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def peers_table(result: BenchmarkResult) -> str:
    return markdown_table(COLUMNS, table_rows(result))


def sweep_table(result: BenchmarkResult) -> str | None:
    """Throughput (items/s) and median latency against batch size, one column per peer."""
    batches = [b for b in result.batches if b is not None]
    if len(batches) < 2:
        return None
    peers = [p for p in result.peers
             if any(r.status == "ok" for r in result.runs if r.peer == p)]
    header = ["batch"] + [f"{p} items/s" for p in peers] + [f"{p} p50 ms" for p in peers]
    rows = []
    for b in batches:
        runs = [result.run_of(p, b) for p in peers]
        rows.append([str(b)]
                    + [_num(r.items_per_second if r else None, "{:.1f}") for r in runs]
                    + [_num(r.summary.latency.median if r and r.summary else None, "{:.3f}")
                       for r in runs])
    return markdown_table(header, rows)


def _num(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.1f} MiB"
