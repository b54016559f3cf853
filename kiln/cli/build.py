"""Build an engine from an ONNX model and save it as a .kiln file.

  kiln build model.onnx -o model.kiln [--fp16] [--minShapes=x:1x3x224x224 --optShapes=...
             --maxShapes=...] [--device cpu|cuda]
  kiln build model.onnx --int8 --calib=DATA [--calibMethod=entropy|minmax|percentile]
             [--calibBatches=N] [--calibCache=FILE]      (post-training quantization)
  kiln build model.onnx --verbose       (also: the tactics the tuner skipped, and why)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kiln.cli.common import (
    add_build_arguments,
    build_with_progress,
    config_from_args,
    console,
    human_bytes,
    load_inputs,
)
from kiln.cli.main import command
from kiln.errors import KilnError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the ONNX model")
    p.add_argument("-o", "--output", "--saveEngine", dest="output",
                   help="where to save the engine (default: the model's name with .kiln)")
    p.add_argument("--loadInputs", help="real inputs for the build's probe run (.npz)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--verbose", action="store_true",
                   help="log the build's details: tactics the tuner skipped, and why")
    add_build_arguments(p)


@command("build", add_arguments)
def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.precision not in ("int8", "fp8") and (args.calib or args.calibCache):
        raise KilnError("--calib/--calibCache were given without --int8 or --fp8",
                        hint="add --int8 (or --fp8) to build a quantized engine")
    if args.loadInputs:
        config.probe_inputs = load_inputs(args.loadInputs)
    output = Path(args.output or Path(args.model).with_suffix(".kiln").name)
    details = _log_build_details() if args.verbose else None
    try:
        engine = build_with_progress(args.model, config, quiet=args.quiet)
    finally:
        if details is not None:
            logging.getLogger("kiln.build").removeHandler(details)
    engine.save(output)
    memory = engine.memory
    layers = engine.layers()
    fused = sum(1 for layer in layers if len(layer.get("fused", [])) > 1)
    console.print(
        f"built [bold]{output}[/]: {len(layers)} layers ({fused} fused), "
        f"{engine.precision} on {engine.device['name']}, weights "
        f"{human_bytes(engine.weight_bytes())}, activations "
        f"{human_bytes(memory.get('activations_planned_bytes'))}, "
        f"{engine.plan['build']['seconds']:.2f} s")
    if "note" in memory:
        console.print(f"[yellow]note:[/] {memory['note']}")
    skipped = engine.plan["build"].get("tuning", {}).get("skipped") or {}
    if skipped and not args.verbose:
        console.print(f"[yellow]note:[/] {len(skipped)} tactic timings raised and were "
                      "skipped; --verbose (or kiln inspect --json) lists them")
    quant = engine.plan["build"].get("quantization")
    if quant:
        _print_quantization(quant)
    choice = engine.plan["build"].get("precision_choice")
    if choice:
        _print_precision_choice(choice, (quant or {}).get("quantized_layers", 0))
    return 0


def _log_build_details() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[V] [%(name)s] %(message)s"))  # trtexec's mark
    log = logging.getLogger("kiln.build")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return handler


def _print_precision_choice(choice: dict, quantized: int) -> None:
    """What the INT8/FP8 choice kept and the whole-engine times it chose by."""
    (key, kept), = ((k, v) for k, v in choice.items() if k.startswith("kept_in_"))
    fallback = key.removeprefix("kept_in_")
    order = sorted(choice["engine_ms"].items(), key=lambda item: item[0] == fallback)
    times = ", ".join(f"{label} {ms:.3f} ms" for label, ms in order)
    if not quantized:
        console.print(f"[yellow]note:[/] no quantized layer made the engine faster, so it is "
                      f"the {fallback} build (whole engines: {times}); "
                      f"--precisionConstraints=obey keeps every layer quantized")
    elif kept:
        console.print(f"kept {len(kept)} layer{'s' * (len(kept) != 1)} in {fallback} where "
                      f"that ran faster (whole engines: {times})")


def _print_quantization(quant: dict) -> None:
    source = f"cache {quant['cache']}" if "cache" in quant else (
        f"{quant.get('method')} calibration over {quant.get('batches')} batches"
        if "method" in quant else quant.get("mode", ""))
    console.print(f"quantized {quant.get('quantized_layers', 0)} layers ({source})")
    if "attention_int8" in quant:
        console.print(f"attention in INT8: {quant['attention_int8']}")
    if "embeddings_int8" in quant:
        console.print(f"embedding tables in INT8 (weights only): {quant['embeddings_int8']}")
    if "cache_written" in quant:
        console.print(f"wrote calibration cache {quant['cache_written']}")
    for layer, why in (quant.get("skipped") or {}).items():
        console.print(f"[yellow]note:[/] {layer} stays in floating point: {why}")
    if "note" in quant:
        console.print(f"[yellow]note:[/] {quant['note']}")
