"""Debugging tools. `kiln debug precision` finds the smallest set of layers that must run in
higher precision for an INT8/FP8/FP16 engine to meet an accuracy target against FP32
(bisection, as Polygraphy's debug precision), and writes them as --layerPrecisions.

  kiln debug precision model.onnx --int8 --calib=DATA --inputs=sample.npz
                       [--metric cosine>=0.999] [-o overrides.txt]
  kiln build model.onnx --int8 --calib=DATA --layerPrecisions=@overrides.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.cli.common import add_build_arguments, config_from_args, console, load_inputs
from kiln.cli.main import command
from kiln.errors import KilnError
from kiln.quant.data import calibration_batches


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tool", choices=["precision"], help="what to debug")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("--inputs", help="inputs to compare on (.npz); default: the first "
                                    "calibration batch")
    p.add_argument("--metric", default="cosine>=0.999",
                   help="accuracy target against FP32, worst output: cosine>=X, top1>=X, "
                        "max_abs<=X or mean_abs<=X (default cosine>=0.999)")
    p.add_argument("-o", "--output", help="write the overrides here, for "
                                          "--layerPrecisions=@FILE")
    add_build_arguments(p)


@command("debug", add_arguments)
def run(args: argparse.Namespace) -> int:
    from kiln.onnx import read_onnx
    from kiln.quant.debug_precision import Metric, find_precision_overrides

    metric = Metric.parse(args.metric)
    config = config_from_args(args)
    config.optimization_level = 0  # trial builds compare accuracy: no tactic timing
    graph_names = [v.name for v in read_onnx(args.model).inputs]
    inputs = [load_inputs(args.inputs)] if args.inputs else _first_batch(config, graph_names)
    result = find_precision_overrides(args.model, config, inputs, metric,
                                      on_progress=lambda text: console.print(f"  {text}"))
    if not result.overrides:
        console.print(f"every layer can stay low-precision: {metric.name}="
                      f"{result.score:.6g} meets {metric}")
        return 0
    console.print(f"[bold]{len(result.overrides)}[/] of {len(result.candidates)} layers need "
                  f"higher precision ({metric.name}={result.score:.6g}, {len(result.trials)} "
                  f"trial builds):")
    for name, precision in result.overrides.items():
        console.print(f"  {name}: {precision}")
    if args.output:
        Path(args.output).write_text(result.flag() + "\n")
        console.print(f"wrote {args.output}: build with --layerPrecisions=@{args.output}")
    else:
        console.print(f"build with --layerPrecisions={result.flag()}")
    return 0


def _first_batch(config, names: list[str]) -> list[dict]:
    if config.calibrator is None or config.calibrator.data is None:
        raise KilnError("debug precision needs inputs to compare on",
                        hint="pass --inputs=sample.npz (or --calib=DATA: its first batch is "
                             "used)")
    return [next(iter(calibration_batches(config.calibrator.data, names, limit=1,
                                          batch_size=config.calibrator.batch_size)))]
