"""The adoption report (`--report=DIR`): report.md, report.json and the charts.

report.md is the page a team reads before adopting kiln: what was measured, on what,
how each engine compares with the baseline (the first peer) in speed, memory and
accuracy, and how to reproduce it. report.json holds the same numbers for tools, with
each run's performance summary under trtexec's labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kiln.bench.benchmark import BenchmarkResult
from kiln.bench.charts import draw_all
from kiln.bench.exports import write_json
from kiln.bench.tables import peers_table, run_row, sweep_table
from kiln.errors import KilnError

REPORT_VERSION = 1


def write_report(result: BenchmarkResult, directory: str | Path, command: str = "") -> Path:
    target = Path(directory)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KilnError(f"cannot create the report folder {target}: {exc}") from None
    charts = draw_all(result, target)
    write_json(target / "report.json", report_json(result, charts, command))
    try:
        (target / "report.md").write_text(report_markdown(result, charts, command))
    except OSError as exc:
        raise KilnError(f"cannot write the report in {target}: {exc}") from None
    return target


def report_json(result: BenchmarkResult, charts: dict[str, str], command: str) -> dict[str, Any]:
    runs = []
    for run in result.runs:
        row = run_row(result, run)
        row["summary"] = run.summary.to_json() if run.summary else None
        if run.profile is not None:
            row["profile"] = run.profile.to_json()
        runs.append(row)
    return {
        "kiln_report_version": REPORT_VERSION,
        "model": result.model,
        "command": command,
        "environment": result.environment,
        "options": dataclasses.asdict(result.options),
        "baseline": result.baseline,
        "batches": result.batches,
        "inputs": [spec.describe() for spec in result.inputs],
        "runs": runs,
        "charts": charts,
    }


def report_markdown(result: BenchmarkResult, charts: dict[str, str], command: str) -> str:
    env = result.environment
    opts = result.options
    lines = [f"# kiln benchmark report: {Path(result.model).name}", ""]
    lines += _verdict(result)
    lines += [
        "## Setup", "",
        f"- model: `{result.model}`",
        f"- device: {env.get('device_name')}",
        f"- software: kiln {env['kiln']}, torch {env['torch']}, onnxruntime "
        f"{env.get('onnxruntime') or 'not installed'}, Python {env['python']}",
        f"- timing (trtexec's rules): warm-up {opts.warmup_ms:g} ms, then at least "
        f"{opts.iterations} queries and {opts.duration_s:g} s per engine and batch; "
        f"percentiles {', '.join(f'{p:g}' for p in opts.percentiles)}",
        f"- data transfers: {'off (--noDataTransfers)' if opts.no_data_transfers else 'timed'}"
        f"; CUDA graphs: {_graphs_text(result)}",
        "- inputs: " + "; ".join(spec.describe() for spec in result.inputs),
        f"- measured: {env['created']}", "",
        "## Speed, memory and accuracy", "",
        f"Baseline (ratio 1.00x, accuracy reference): **{result.baseline or 'none ran'}**. "
        "Speedup is the baseline's median latency over the engine's. Host memory is the "
        "process's resident set added while the engine built and ran; device memory is "
        "the peak allocated on the GPU.", "",
        peers_table(result), "",
    ]
    sweep = sweep_table(result)
    if sweep:
        lines += ["## Batch size", "", sweep, ""]
    lines += [
        "## Charts", "",
        f"![latency distribution]({charts['latency']})", "",
        f"![throughput]({charts['throughput']})", "",
        f"![memory]({charts['memory']})", "",
        f"![accuracy beside speed]({charts['accuracy_speed']})", "",
    ]
    notes = _notes(result)
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if command:
        lines += ["## Reproduce", "", "```", command, "```", ""]
    return "\n".join(lines)


def _graphs_text(result: BenchmarkResult) -> str:
    states = sorted({f"{r.peer}: {r.cuda_graph}" for r in result.runs
                     if r.status == "ok" and r.kind == "kiln"})
    return ", ".join(states) or "n/a"


def _verdict(result: BenchmarkResult) -> list[str]:
    rows = [run_row(result, r) for r in result.runs if r.status == "ok"]
    kiln_rows = [r for r in rows if r["peer"].startswith("kiln") and r.get("speedup")
                 and r["peer"] != result.baseline]
    tuned = [r for r in kiln_rows if r["peer"] != "kiln-unoptimized"] or kiln_rows
    if not tuned or result.baseline is None:
        return []
    best = max(tuned, key=lambda r: r["speedup"])
    batch = f" at batch {best['batch']}" if best["batch"] is not None else ""
    ratio = best["speedup"]
    pace = f"{ratio:.3g}x faster than" if ratio >= 1 else f"{1 / ratio:.3g}x slower than"
    acc = best.get("accuracy") or {}
    diff = acc.get("max_abs_diff")
    accuracy = (f", largest output difference {diff:.2e}" if diff is not None else "")
    top1 = acc.get("top1_agreement")
    if top1 is not None:
        accuracy += f", top-1 agreement {top1:.1%}"
    return [f"**{best['peer']}** runs {pace} {result.baseline}{batch} (median latency "
            f"{best['p50_ms']:.3f} ms){accuracy}.", ""]


def _notes(result: BenchmarkResult) -> list[str]:
    notes = []
    if result.device == "cpu":
        notes.append("CPU run: GPU Compute Time, H2D/D2H Latency, device memory and GPU "
                     "utilization do not apply (n/a).")
    for run in result.runs:
        where = f"{run.peer}" + (f" batch {run.batch}" if run.batch is not None else "")
        if run.status != "ok":
            notes.append(f"{where} {run.status}: {run.note}")
        elif run.summary is not None:
            notes += [f"{where}: {w.strip('* ').strip()}" for w in run.summary.warnings
                      if w.startswith("*")]
    return notes
