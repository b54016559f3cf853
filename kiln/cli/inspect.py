"""Show what an engine is made of: layers, the nodes each fused, shapes, precision, tactic,
placement and memory. An .onnx model is built in memory with the given flags first.

  kiln inspect model.kiln [--json]
  kiln inspect model.onnx --fp16
  kiln inspect --passes          (the optimization pipeline, in order)
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from rich.console import Console
from rich.table import Table

from kiln.cli.common import add_build_arguments, human_bytes, load_engine_or_build
from kiln.cli.main import command
from kiln.engine.engine import Engine
from kiln.errors import KilnError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a .kiln engine or an .onnx model")
    p.add_argument("--json", action="store_true", help="print the layer list as JSON")
    p.add_argument("--passes", action="store_true", help="list the optimization passes")
    p.add_argument("--max-layers", type=int, default=400, help="rows to show (default 400)")
    add_build_arguments(p)


@command("inspect", add_arguments)
def run(args: argparse.Namespace) -> int:
    out = Console()
    if args.passes:
        _print_passes(out)
        if not args.model:
            return 0
    if not args.model:
        raise KilnError("give a model or engine to inspect", hint="kiln inspect model.kiln")
    engine = load_engine_or_build(args.model, args)
    if args.json:
        print(json.dumps(describe(engine), indent=1))
        return 0
    _print_engine(out, engine, args.max_layers)
    return 0


def describe(engine: Engine) -> dict:
    shapes = engine.plan.get("value_shapes", {})
    return {
        "device": engine.device,
        "precision": engine.precision,
        "inputs": engine.plan["inputs"],
        "outputs": engine.plan["outputs"],
        "profiles": engine.plan["profiles"],
        "memory": engine.memory,
        "build": engine.plan["build"],
        "layers": [
            {
                "name": layer["name"], "op": layer["op"], "domain": layer["domain"],
                "fused": layer.get("fused", []), "precision": layer["precision"],
                "tactic": layer["tactic"], "placement": layer["placement"],
                "output_shapes": [shapes.get(o) for o in layer["outputs"] if o],
            }
            for layer in engine.layers()
        ],
    }


def _print_engine(out: Console, engine: Engine, max_rows: int) -> None:
    info = describe(engine)
    build = info["build"]
    out.print(f"[bold]engine[/] {build.get('source') or ''}: {info['precision']} on "
              f"{info['device']['name']} (capability {info['device'].get('capability')}), "
              f"built in {build.get('seconds', 0):.2f} s by kiln {engine.plan['kiln_version']}")
    for side in ("inputs", "outputs"):
        for io in info[side]:
            dims = "x".join("?" if not isinstance(d, int) else str(d) for d in io["shape"] or [])
            out.print(f"  {side[:-1]:6s} {io['name']}: {io['dtype']} {dims or ''}")
    for i, profile in enumerate(info["profiles"]):
        for name, dims in profile.items():
            text = " x ".join(f"{a}..{'inf' if c is None else c} (opt {b})" if a != c else str(a)
                              for a, b, c in dims)
            out.print(f"  profile {i} {name}: {text}")
    memory = info["memory"]
    out.print(f"  memory: weights {human_bytes(memory.get('weights_bytes'))}, activations "
              f"{human_bytes(memory.get('activations_planned_bytes'))} planned with reuse "
              f"(peak live {human_bytes(memory.get('activations_peak_live_bytes'))}, "
              f"{human_bytes(memory.get('activations_total_bytes'))} without reuse)")
    if memory.get("note"):
        out.print(f"  note: {memory['note']}")
    if build.get("quantization"):
        out.print(f"  {_quantization_text(build['quantization'], info['layers'])}")
    skipped = (build.get("tuning") or {}).get("skipped") or {}
    if skipped:  # a tactic that raised where it said it could run: worth a look
        first = next(iter(skipped.items()))
        out.print(f"  [yellow]note:[/] {len(skipped)} tactic timings raised and were skipped "
                  f"(first: {first[0]}: {first[1]}); all under build.tuning.skipped (--json)")
    layers = info["layers"]
    counts = Counter(layer["precision"] for layer in layers)
    out.print(f"  {len(layers)} layers: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    table = Table(show_lines=False, header_style="bold")
    for col in ("#", "layer", "op", "fused", "precision", "tactic", "where", "output shape"):
        table.add_column(col)
    for i, layer in enumerate(layers[:max_rows]):
        fused = layer["fused"]
        table.add_row(
            str(i), layer["name"], layer["op"],
            f"{len(fused)}: {', '.join(fused[:3])}{'...' if len(fused) > 3 else ''}"
            if len(fused) > 1 else "",
            layer["precision"], layer["tactic"], layer["placement"],
            " ".join("x".join(map(str, s)) if s is not None else "?"
                     for s in layer["output_shapes"]),
        )
    out.print(table)
    if len(layers) > max_rows:
        out.print(f"  ... {len(layers) - max_rows} more layers (--max-layers)")


def _quantization_text(quant: dict, layers: list[dict]) -> str:
    """How the engine was quantized and which kernels its quantized layers run."""
    details = [quant.get("mode", "")]
    details += [f"{key} {quant[key]}" for key in ("method", "batches", "cache") if key in quant]
    tactics = Counter(layer["tactic"] for layer in layers
                      if layer["precision"] in ("int8", "fp8"))
    kernels = ", ".join(f"{name} x{count}" for name, count in tactics.items())
    text = f"quantization: {', '.join(details)}; {quant.get('quantized_layers', 0)} layers"
    if kernels:
        text += f" run {kernels}"
    if "int8-exact-sim" in tactics:
        text += " (int8-exact-sim: exact simulation of the GPU's integer arithmetic)"
    return text


def _print_passes(out: Console) -> None:
    from kiln.passes import passes

    table = Table(header_style="bold")
    for col in ("phase", "pass", "what it does"):
        table.add_column(col)
    for p in passes():
        table.add_row(p.phase, p.name, p.doc)
    out.print(table)
