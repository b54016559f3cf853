"""Run an engine (or an ONNX model, built first) on inputs and save or print the outputs.

  kiln run model.kiln --inputs in.npz [--output out.npz]
  kiln run model.kiln --loadInputs=x:x.npy,mask:mask.npy
Without inputs, random ones are made at the engine's tuning (opt) shape.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kiln.build.builder import probe_inputs
from kiln.cli.common import add_build_arguments, console, load_engine_or_build, load_inputs
from kiln.cli.main import command
from kiln.errors import KilnError
from kiln.runtime import ExecutionContext


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine", help="a .kiln engine (or an .onnx model to build first)")
    p.add_argument("--inputs", "--loadInputs", dest="inputs",
                   help="inputs: an .npz keyed by input name, or name:file.npy,...")
    p.add_argument("--output", help="save the outputs to this .npz")
    add_build_arguments(p)


@command("run", add_arguments)
def run(args: argparse.Namespace) -> int:
    engine = load_engine_or_build(args.engine, args)
    inputs = load_inputs(args.inputs, engine)
    if not inputs:
        inputs = probe_inputs(engine, engine.profiles[0])
        console.print("no --inputs given: running on random inputs at the opt shape")
    context = ExecutionContext(engine)
    started = time.perf_counter()
    outputs = context.run(inputs)
    elapsed = (time.perf_counter() - started) * 1000
    for name, value in outputs.items():
        print(_summary(name, value))
    print(f"ran in {elapsed:.2f} ms (first run, including warm-up)")
    if args.output:
        try:
            np.savez(args.output, **{k: np.asarray(v) for k, v in outputs.items()})
        except OSError as exc:
            raise KilnError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"saved outputs to {args.output}")
    return 0


def _summary(name: str, value) -> str:
    if isinstance(value, list):
        return f"{name}: sequence of {len(value)}"
    array = np.asarray(value)
    text = f"{name}: {array.dtype} {list(array.shape)}"
    if array.size and array.dtype.kind in "fiub":
        data = array.astype(np.float64)
        text += f" min {data.min():.4g} max {data.max():.4g} mean {data.mean():.4g}"
    return text
