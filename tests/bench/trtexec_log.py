"""A trtexec log parser written from trtexec's documented output (TensorRT's developer
guide, "trtexec": the performance summary, and the engine explorer's log reader), kept
apart from kiln's code so the tests check kiln against the format, not against itself.

Every log line is `[MM/DD/YYYY-HH:MM:SS] [S] message` with S one of I, W, E, V; the run is
framed by `&&&& RUNNING|PASSED|FAILED <name> # <command>` lines. The summary block:

    === Performance summary ===
    Throughput: <float> qps
    Latency: min = <f> ms, max = <f> ms, mean = <f> ms, median = <f> ms,
             percentile(<p>%) = <f> ms, ...      (one line)
    Enqueue Time: (same fields)
    H2D Latency: (same fields)
    GPU Compute Time: (same fields)
    D2H Latency: (same fields)
    Total Host Walltime: <float> s
    Total GPU Compute Time: <float> s

kiln writes `n/a (reason)` for a field that does not apply (GPU lines on the CPU); this
parser returns None for those.
"""

from __future__ import annotations

import re

LINE = re.compile(r"^\[(\d{2})/(\d{2})/(\d{4})-(\d{2}):(\d{2}):(\d{2})\] \[([IWEV])\] ?(.*)$")
FRAME = re.compile(r"^&&&& (RUNNING|PASSED|FAILED) (\S+) .*# (.*)$")
FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan"
STAT = re.compile(rf"^(min|max|mean|median|percentile\(({FLOAT})%\)) = ({FLOAT}) ms$")
STAT_LABELS = ("Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency")
PROFILE_ROW = re.compile(rf"^\s*({FLOAT})\s+({FLOAT})\s+({FLOAT})\s+({FLOAT})\s+(.+)$")


class LogFormatError(ValueError):
    pass


def parse_lines(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(severity, message) for every log line, and (state, command) for every frame."""
    entries, frames = [], []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        frame = FRAME.match(raw)
        if frame:
            frames.append((frame.group(1), frame.group(3)))
            continue
        match = LINE.match(raw)
        if match is None:
            continue  # other programs' output (progress on stderr, tables)
        month, day = int(match.group(1)), int(match.group(2))
        if not (1 <= month <= 12 and 1 <= day <= 31):
            raise LogFormatError(f"bad date in {raw!r}")
        entries.append((match.group(7), match.group(8)))
    return entries, frames


def _stats(value: str) -> dict | None:
    if value.startswith("n/a"):
        return None
    result: dict = {"percentiles": {}}
    for part in value.split(", "):
        match = STAT.match(part.strip())
        if match is None:
            raise LogFormatError(f"not a trtexec statistic: {part!r}")
        if match.group(2) is not None:
            result["percentiles"][float(match.group(2))] = float(match.group(3))
        else:
            result[match.group(1)] = float(match.group(3))
    for key in ("min", "max", "mean", "median"):
        if key not in result:
            raise LogFormatError(f"statistic {key} missing in {value!r}")
    return result


def _number(value: str, unit: str) -> float | None:
    if value.startswith("n/a"):
        return None
    match = re.fullmatch(rf"({FLOAT}) {unit}", value.strip())
    if match is None:
        raise LogFormatError(f"expected '<number> {unit}', got {value!r}")
    return float(match.group(1))


def parse_summary(text: str) -> dict:
    """The performance summary: {label: value}, plus "warnings" (the [W] lines after it)."""
    entries, _frames = parse_lines(text)
    start = next((i for i, (sev, msg) in enumerate(entries)
                  if sev == "I" and msg.strip() == "=== Performance summary ==="), None)
    if start is None:
        raise LogFormatError("no '=== Performance summary ===' section")
    summary: dict = {"warnings": []}
    for severity, message in entries[start + 1:]:
        if severity == "W":
            summary["warnings"].append(message)
            continue
        key, sep, value = message.partition(": ")
        if not sep or key not in (*STAT_LABELS, "Throughput", "Total Host Walltime",
                                  "Total GPU Compute Time"):
            break
        if key == "Throughput":
            summary[key] = _number(value, "qps")
        elif key.startswith("Total"):
            summary[key] = _number(value, "s")
        else:
            summary[key] = _stats(value)
    missing = [k for k in (*STAT_LABELS, "Throughput", "Total Host Walltime",
                           "Total GPU Compute Time") if k not in summary]
    if missing:
        raise LogFormatError(f"summary lacks {missing}")
    return summary


def parse_profile(text: str) -> dict:
    """`=== Profile (N iterations ) ===`: {"iterations": N, "layers": [(name, total,
    average, median, percent)], "total": (...)}."""
    entries, _ = parse_lines(text)
    start = next((i for i, (_, m) in enumerate(entries) if m.startswith("=== Profile (")), None)
    if start is None:
        raise LogFormatError("no profile section")
    iterations = int(re.search(r"\((\d+) iterations \)", entries[start][1]).group(1))
    header = entries[start + 1][1].split()
    if header != ["Time(ms)", "Avg.(ms)", "Median(ms)", "Time(%)", "Layer"]:
        raise LogFormatError(f"unexpected profile header {header}")
    layers, total = [], None
    for _, message in entries[start + 2:]:
        match = PROFILE_ROW.match(message)
        if match is None:
            break
        row = (match.group(5).strip(), *(float(match.group(i)) for i in range(1, 5)))
        if row[0] == "Total":
            total = row
            break
        layers.append(row)
    return {"iterations": iterations, "layers": layers, "total": total}
