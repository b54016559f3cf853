"""Check an engine's outputs against a reference, with Polygraphy's semantics and defaults.

  kiln compare model.onnx [--fp16 ...] [--inputs=in.npz] [--atol=1e-5 --rtol=1e-5]
               [--check-error-stat=elemwise|max|mean|median|quantile] [--reference=ort]
  kiln compare model.onnx --atol 1e-3 logits:1e-2      (per-output tolerances)
  kiln compare model.onnx --inputs=sample.npz --load-outputs=sample.npz

Prints per-output statistics, the minimum tolerance that would pass, cosine similarity,
PSNR and top-k agreement, and PASSED/FAILED per output and overall. Exits 0 when every
output matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from kiln.bench.accuracy import REFERENCES, CompareSetup, run_compare
from kiln.bench.compare import CHECK_ERROR_STATS, Tolerances
from kiln.bench.exports import write_json
from kiln.bench.logs import PolygraphyLog
from kiln.build.profiles import parse_shapes
from kiln.cli.common import add_build_arguments, config_from_args
from kiln.cli.main import command
from kiln.errors import KilnError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the ONNX model")
    p.add_argument("--loadEngine", metavar="FILE",
                   help="compare this saved engine instead of building one")
    p.add_argument("--inputs", "--loadInputs", dest="inputs", metavar="SPEC",
                   help="inputs: in.npz, or name:file pairs (.npy or raw); default random")
    p.add_argument("--iterations", type=int, default=1,
                   help="sets of random inputs to compare on (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random inputs (default 1)")
    p.add_argument("--reference", default="ort", choices=REFERENCES,
                   help="what to compare against: ONNX Runtime on the CPU (default), kiln "
                        "FP32, or kiln FP32 without optimizations")
    p.add_argument("--load-outputs", metavar="FILE",
                   help="compare against outputs saved in this .npz (output.<name> keys)")
    p.add_argument("--save-outputs", metavar="FILE",
                   help="save the inputs and kiln's outputs to this .npz (sample format)")
    p.add_argument("--save-results", metavar="FILE", help="write the comparison as JSON")
    g = p.add_argument_group("comparison (Polygraphy's flags and defaults)")
    g.add_argument("--atol", nargs="+", metavar="[NAME:]TOL",
                   help="absolute tolerance, default 1e-5; NAME:TOL for one output")
    g.add_argument("--rtol", nargs="+", metavar="[NAME:]TOL",
                   help="relative tolerance, default 1e-5; NAME:TOL for one output")
    g.add_argument("--check-error-stat", nargs="+", metavar="[NAME:]STAT",
                   help=f"statistic that must be within tolerance: "
                        f"{', '.join(CHECK_ERROR_STATS)} (default elemwise)")
    g.add_argument("--error-quantile", nargs="+", metavar="[NAME:]Q",
                   help="quantile for --check-error-stat=quantile (default 0.99)")
    g.add_argument("--infinities-compare-equal", action="store_true",
                   help="matching +-inf values count as equal (default: their difference is "
                        "NaN, a mismatch)")
    g.add_argument("--fail-fast", action="store_true", help="stop at the first mismatch")
    g.add_argument("--top-k", type=int, default=5,
                   help="k for top-k agreement on classifier outputs (default 5)")
    g.add_argument("--show-histograms", action="store_true",
                   help="print histograms for every output (by default only on failure)")
    g.add_argument("--verbose", action="store_true", help="more detail")
    add_build_arguments(p)


@command("compare", add_arguments)
def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    tolerances = Tolerances(
        atol=_per_output(args.atol, "--atol", float, 1e-5),
        rtol=_per_output(args.rtol, "--rtol", float, 1e-5),
        check_error_stat=_per_output(args.check_error_stat, "--check-error-stat", str,
                                     "elemwise"),
        error_quantile=_per_output(args.error_quantile, "--error-quantile", float, 0.99),
        infinities_compare_equal=args.infinities_compare_equal, top_k=args.top_k)
    if args.top_k < 1:
        raise KilnError(f"--top-k must be at least 1, got {args.top_k}")
    if Path(args.model).suffix == ".kiln":
        raise KilnError("kiln compare takes the .onnx model (the reference runs it)",
                        hint=f"kiln compare model.onnx --loadEngine={args.model}")
    setup = CompareSetup(
        model=args.model, config=config_from_args(args), engine_path=args.loadEngine,
        reference=args.reference, reference_outputs=args.load_outputs,
        input_files=args.inputs, iterations=args.iterations, seed=args.seed,
        shapes=parse_shapes(args.shapes, "--shapes") or parse_shapes(args.optShapes,
                                                                       "--optShapes"),
        tolerances=tolerances, fail_fast=args.fail_fast, show_histograms=args.show_histograms,
        save_outputs=args.save_outputs)
    log = PolygraphyLog(verbose=args.verbose)
    cmd = _command_line(args)
    log.info(f"RUNNING | Command: {cmd}")
    result = run_compare(setup, log)
    if args.save_results:
        write_json(args.save_results, result.to_json())
    runtime = time.perf_counter() - started
    line = f"| Runtime: {runtime:.3f}s | Command: {cmd}"
    if result.passed:
        log.info(f"PASSED {line}")
        return 0
    log.error(f"FAILED {line}")
    return 1


def _per_output(values: list[str] | None, flag: str, kind: type, default):
    """Polygraphy's `--atol 1e-5 out0:1e-4`: a bare value is the default for every output."""
    if not values:
        return default
    result: dict[str, object] = {}
    for item in values:
        name, sep, text = item.rpartition(":")
        try:
            value = kind(text)
        except ValueError:
            raise KilnError(f"{flag}: {text!r} in {item!r} is not a {kind.__name__}",
                            hint=f"write {flag} 1e-3 or {flag} output_name:1e-3") from None
        if kind is float and value < 0:
            raise KilnError(f"{flag} cannot be negative, got {item!r}")
        result[name if sep else ""] = value
    if list(result) == [""]:
        return result[""]
    return result


def _command_line(args: argparse.Namespace) -> str:
    argv = sys.argv[1:]
    if argv and argv[0] == "compare":
        return "kiln " + shlex.join(argv)
    return f"kiln compare {shlex.quote(args.model)}"
