"""BuilderConfig: everything that decides how an engine is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kiln.errors import KilnError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


@dataclass
class BuilderConfig:
    """Build settings, named after trtexec's flags where one exists.

    precision: the lowest precision layers may use ("fp32", "fp16", "int8", "fp8");
        sensitive layers stay in fp32 whatever it is. "int8" / "fp8" quantize convolutions
        and dense layers; `fallback_precision` ("fp16" or "fp32") is what the other
        layers of such a build use (trtexec's --int8 alone means "fp32", --int8 --fp16
        "fp16"). `io_precision` keeps
        the engine's inputs and outputs in the model's own types unless set to "fp16"
        (trtexec's --inputIOFormats).
    device: "cpu", "cuda" or "cuda:N"; "auto" takes CUDA when there is one.
    profiles: min/opt/max shapes (dicts of name -> dims), one dict per profile.
    layer_precisions: per layer (node name) precision overrides, e.g. {"conv1": "fp32"}.
    calibrator: for "int8"/"fp8" builds of models without Q/DQ nodes, a
        `kiln.quant.Calibrator` (data, method, cache).
    optimization_level: 0 picks tactics by heuristics without timing; 1..5 time every
        candidate the level offers on the device (higher levels offer more) and keep the
        fastest; `timing_cache` makes those timings persistent.
    precision_constraints: for calibrated "int8"/"fp8" builds, "none" keeps a quantized
        layer only where it is faster than in `fallback_precision` (timed on the device,
        as TensorRT chooses), "obey" quantizes every layer it can; "auto" (the default) is
        "none" on CUDA and "obey" on the CPU, where INT8 simulates the GPU's arithmetic.
    optimize: False skips the pass pipeline (no folding, no fusion): the model runs node
        by node as written, the "framework as is" baseline `kiln bench` compares against.
    """

    precision: str = "fp32"
    device: str = "auto"
    profiles: list[dict[str, dict[str, list[int]]]] = field(default_factory=list)
    io_precision: str = "model"
    layer_precisions: dict[str, str] = field(default_factory=dict)
    optimization_level: int = 3
    timing_cache: str | None = None  # path of a timing cache file to read and extend
    optimize: bool = True
    probe_inputs: dict[str, Any] | None = None  # real inputs for the build's shape probe
    calibrator: Any = None  # kiln.quant.Calibrator: INT8/FP8 calibration data, method, cache
    fallback_precision: str = "fp16"  # int8/fp8 builds: the precision of unquantized layers
    precision_constraints: str = "auto"  # calibrated int8/fp8: "none", "obey" or "auto"
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise KilnError(f"unknown precision {self.precision!r}",
                            hint=f"use one of {', '.join(PRECISIONS)}")
        for layer, precision in self.layer_precisions.items():
            if precision not in PRECISIONS:
                raise KilnError(f"--layerPrecisions: {layer}:{precision} is not a precision",
                                hint=f"use one of {', '.join(PRECISIONS)}")
        if self.fallback_precision not in ("fp16", "fp32"):
            raise KilnError(f"fallback_precision must be fp16 or fp32, got "
                            f"{self.fallback_precision!r}")
        if self.precision_constraints not in ("auto", "none", "obey"):
            raise KilnError(f"--precisionConstraints must be none or obey, got "
                            f"{self.precision_constraints!r}")
        if not 0 <= self.optimization_level <= 5:
            raise KilnError(f"--builderOptimizationLevel must be 0..5, got "
                            f"{self.optimization_level}")

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def float_precision(self) -> str:
        """The precision of layers that are not quantized."""
        return self.fallback_precision if self.precision in ("int8", "fp8") else self.precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KilnError(f"unknown device {name!r}", hint="use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KilnError("--device cuda was asked for, but this machine has no CUDA device "
                        "(or torch was built without CUDA)", hint="build with --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise KilnError(f"device {name!r} is not supported", hint="use cpu or cuda")
    return device
