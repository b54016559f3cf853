"""Flags and helpers shared by several commands (build flags, input loading, progress)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from kiln.build import BuilderConfig, build_engine
from kiln.build.profiles import parse_shapes
from kiln.engine.engine import Engine
from kiln.errors import KilnError
from kiln.quant import METHODS, Calibrator
from kiln.quant.calibrators import DEFAULT_PERCENTILE

console = Console(stderr=True)


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """trtexec's build flags."""
    g = p.add_argument_group("build (trtexec's flags)")
    g.add_argument("--fp16", action="store_true", help="allow FP16 layers")
    g.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--minShapes", help="min shapes, e.g. input:1x3x224x224")
    g.add_argument("--optShapes", help="shapes to tune for, e.g. input:8x3x224x224")
    g.add_argument("--maxShapes", help="max shapes, e.g. input:32x3x224x224")
    g.add_argument("--shapes", help="one fixed shape per input (min = opt = max)")
    g.add_argument("--layerPrecisions", help="per-layer precision, e.g. conv1:fp32,fc:fp16")
    g.add_argument("--builderOptimizationLevel", type=int, default=3,
                   help="0 (heuristics only) .. 5 (widest search); default 3")
    g.add_argument("--timingCacheFile", metavar="FILE",
                   help="tactic timings: read if it exists, extended and written after the build")
    add_quantization_arguments(p)


def add_quantization_arguments(p: argparse.ArgumentParser) -> None:
    """INT8/FP8: trtexec's --int8/--fp8/--calib, plus the calibration method and batches."""
    g = p.add_argument_group("quantization")
    g.add_argument("--int8", action="store_true",
                   help="INT8 convolutions and dense layers; the rest in FP32, or in FP16 "
                        "with --fp16")
    g.add_argument("--fp8", action="store_true", help="FP8 (E4M3) instead of INT8 (Hopper)")
    g.add_argument("--best", action="store_true", help="--int8 --fp16")
    g.add_argument("--precisionConstraints", choices=("none", "obey"), default=None,
                   help="none: a quantized layer stays INT8/FP8 only where faster than "
                        "the fallback (default on CUDA); obey: every quantizable layer does")
    g.add_argument("--calib", metavar="DATA",
                   help="calibration data: a folder of .npz batches or one .npz of samples")
    g.add_argument("--calibMethod", choices=METHODS, default="entropy",
                   help="entropy (TensorRT's EntropyCalibration2, default), minmax, percentile")
    g.add_argument("--calibBatches", type=int, metavar="N", help="use at most N batches")
    g.add_argument("--calibBatchSize", type=int, metavar="N",
                   help="samples per batch when --calib is one .npz (default 32)")
    g.add_argument("--calibPercentile", type=float, default=DEFAULT_PERCENTILE,
                   help=f"percentile of |x| for --calibMethod=percentile "
                        f"(default {DEFAULT_PERCENTILE})")
    g.add_argument("--calibCache", metavar="FILE",
                   help="TensorRT-format calibration cache: used if it exists (no calibration),"
                        " written after calibrating otherwise")


def config_from_args(args: argparse.Namespace) -> BuilderConfig:
    opt = parse_shapes(args.optShapes, "--optShapes") or parse_shapes(args.shapes, "--shapes")
    profile: dict[str, Any] = {}
    if opt or args.minShapes or args.maxShapes:
        mins = parse_shapes(args.minShapes, "--minShapes")
        maxs = parse_shapes(args.maxShapes, "--maxShapes")
        profile = {"min": mins or None, "opt": opt or None, "max": maxs or None}
    return BuilderConfig(
        precision=_precision(args),
        device=args.device,
        profiles=[profile] if profile else [],
        layer_precisions=parse_layer_precisions(args.layerPrecisions),
        optimization_level=args.builderOptimizationLevel,
        timing_cache=args.timingCacheFile,
        calibrator=calibrator_from_args(args),
        precision_constraints=getattr(args, "precisionConstraints", None) or "auto",
        fallback_precision="fp16" if args.fp16 or getattr(args, "best", False) else "fp32",
    )


def _precision(args: argparse.Namespace) -> str:
    if getattr(args, "fp8", False):
        return "fp8"
    if getattr(args, "int8", False) or getattr(args, "best", False):
        return "int8"
    return "fp16" if args.fp16 else "fp32"


def calibrator_from_args(args: argparse.Namespace) -> Calibrator | None:
    """The calibration flags, for INT8/FP8 builds (and `kiln bench`'s kiln-int8 peers)."""
    wanted = _precision(args) in ("int8", "fp8") or getattr(args, "calib", None) or getattr(
        args, "calibCache", None)
    if not wanted:
        return None
    return Calibrator(data=args.calib, method=args.calibMethod, batches=args.calibBatches,
                      cache=args.calibCache, percentile=args.calibPercentile,
                      batch_size=args.calibBatchSize)


def parse_layer_precisions(text: str | None) -> dict[str, str]:
    """`conv1:fp32,fc:fp16`, or `@FILE` holding that (what `kiln debug precision` writes);
    a name may contain colons (the last one separates the precision)."""
    if text and text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise KilnError(f"--layerPrecisions: file {path} not found",
                            hint="write it with kiln debug precision -o FILE")
        text = path.read_text().strip()
    result = {}
    for item in (text or "").replace("\n", ",").split(","):
        if not item.strip():
            continue
        name, sep, precision = item.rpartition(":")
        if not sep or not name:
            raise KilnError(f"--layerPrecisions: {item!r} is not layer:precision",
                            hint="write --layerPrecisions=conv1:fp32,fc:fp16")
        result[name.strip()] = precision.strip()
    return result


def build_with_progress(model: str, config: BuilderConfig, quiet: bool = False) -> Engine:
    if quiet or not sys.stderr.isatty():
        return build_engine(model, config)
    with console.status("building") as status:
        return build_engine(model, config, on_stage=lambda s: status.update(f"building: {s}"))


def load_engine_or_build(path: str, args: argparse.Namespace) -> Engine:
    """A .kiln file is loaded; an .onnx file is built with the command's build flags."""
    if Path(path).suffix == ".kiln" or _is_engine(path):
        return Engine.load(path)
    return build_with_progress(path, config_from_args(args))


def _is_engine(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"kiln.plan" in head


def load_inputs(spec: str | None, engine: Engine | None = None) -> dict[str, np.ndarray]:
    """`--inputs` / `--loadInputs`: an .npz (keys are input names, or `input.<name>`), or
    trtexec's `name:file.npy,other:file.npy`."""
    if not spec:
        return {}
    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        return _from_npz(path, engine)
    if path.suffix == ".npz" and ":" not in spec:
        raise KilnError(f"input file not found: {path}")
    if path.suffix == ".npy" and ":" not in spec:
        raise KilnError(f"--inputs {spec}: a .npy file holds one array, without its input's name",
                        hint=f"name the input: --inputs=<input name>:{spec}")
    inputs = {}
    for item in spec.split(","):
        name, sep, file = item.rpartition(":")
        if not sep:
            raise KilnError(f"cannot read inputs from {spec!r}: not an .npz file, and not "
                            "name:file pairs", hint="pass --inputs=data.npz or x:x.npy,y:y.npy")
        inputs[name.strip("'\"")] = _read_array(Path(file))
    return inputs


def _from_npz(path: Path, engine: Engine | None) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise KilnError(f"cannot read {path}: {exc}", hint="save inputs with numpy.savez") from None
    if any(k.startswith("input.") for k in arrays):  # kiln's sample format
        arrays = {k[len("input."):]: v for k, v in arrays.items() if k.startswith("input.")}
    return arrays


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise KilnError(f"input file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise KilnError(f"cannot read {path} as a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise KilnError(f"{path} is an .npz archive, not one .npy array",
                        hint=f"pass the archive alone: --inputs={path}")
    return array


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
