"""Inference options of a benchmark run, named and defaulted as trtexec's flags are.

    --iterations=10 --warmUp=200 (ms) --duration=3 (s) --avgRuns=10 --percentile=90,95,99

A run warms up for `warmup_ms`, then times queries until it has run at least `iterations`
of them and at least `duration_s` seconds (trtexec's rule; `duration_s=-1` runs until
interrupted).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import KilnError

DEFAULT_PERCENTILES = (90.0, 95.0, 99.0)


@dataclass
class InferenceOptions:
    iterations: int = 10
    warmup_ms: float = 200.0
    duration_s: float = 3.0
    avg_runs: int = 10
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    use_cuda_graph: bool | None = None  # None: the runtime's default (on with CUDA)
    no_data_transfers: bool = False
    separate_profile_run: bool = False
    profile: bool = False  # time every layer (--dumpProfile / --exportProfile)
    seed: int = 1

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise KilnError(f"--iterations must be at least 1, got {self.iterations}")
        if self.warmup_ms < 0:
            raise KilnError(f"--warmUp is in milliseconds and cannot be negative, got "
                            f"{self.warmup_ms:g}", hint="use --warmUp=0 for no warm-up")
        if self.duration_s < 0 and self.duration_s != -1:
            raise KilnError(f"--duration is in seconds: 0 or more, or -1 to run until "
                            f"interrupted; got {self.duration_s:g}")
        if self.avg_runs < 1:
            raise KilnError(f"--avgRuns must be at least 1, got {self.avg_runs}")
        for p in self.percentiles:
            if not 0 <= p <= 100:
                raise KilnError(f"--percentile values must be in 0..100, got {p:g}",
                                hint="write --percentile=90,95,99")


def parse_percentiles(text: str | None) -> tuple[float, ...]:
    """`90,95,99` -> (90.0, 95.0, 99.0); trtexec's --percentile."""
    if text is None:
        return DEFAULT_PERCENTILES
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(float(item))
        except ValueError:
            raise KilnError(f"--percentile: {item!r} is not a number",
                            hint="write --percentile=90,95,99") from None
    if not values:
        raise KilnError("--percentile needs at least one value", hint="--percentile=90,95,99")
    return tuple(values)
