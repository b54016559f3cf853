"""`kiln compare`: run a kiln engine and a reference on the same inputs, and judge every
output with Polygraphy's semantics (kiln.bench.compare), printing what Polygraphy prints.

The reference is ONNX Runtime on the CPU by default, or kiln FP32 (`kiln-fp32`, or
`kiln-unoptimized` for the model run node by node), or outputs saved earlier (an .npz in
kiln's sample format, `output.<name>`). Inputs are random (seeded, respecting the
model's types and index ranges; see kiln.bench.inputs) or come from a file.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.bench.compare import (
    OutputComparison,
    Tolerances,
    compare_outputs,
    histogram_lines,
    metrics_text,
    stats_text,
)
from kiln.bench.inputs import (
    InputSpec,
    load_input_files,
    random_inputs,
    read_npz,
    specs_from_graph,
)
from kiln.bench.logs import PolygraphyLog
from kiln.bench.runners import KilnRunner, OrtRunner
from kiln.build import BuilderConfig, build_engine
from kiln.engine.engine import Engine
from kiln.errors import KilnError

REFERENCES = ("ort", "kiln-fp32", "kiln-unoptimized")


@dataclass
class CompareSetup:
    model: str
    config: BuilderConfig = field(default_factory=BuilderConfig)
    engine_path: str | None = None  # a saved engine instead of building one
    reference: str = "ort"
    reference_outputs: str | None = None  # .npz of saved outputs, instead of running one
    input_files: str | None = None
    iterations: int = 1
    seed: int = 1
    shapes: dict[str, list[int]] | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    fail_fast: bool = False
    show_histograms: bool = False
    save_outputs: str | None = None

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise KilnError(f"unknown reference {self.reference!r}",
                            hint=f"use one of {', '.join(REFERENCES)}")
        if self.iterations < 1:
            raise KilnError(f"--iterations must be at least 1, got {self.iterations}")
        if not Path(self.model).is_file():
            raise KilnError(f"model file not found: {self.model}",
                            hint="kiln compare needs the .onnx model (the reference runs it)")
        for label, path in (("--loadEngine", self.engine_path),
                            ("--load-outputs", self.reference_outputs)):
            if path is not None and not Path(path).is_file():
                raise KilnError(f"{label}: file not found: {path}")


@dataclass
class CompareResult:
    passed: bool
    iterations: list[dict[str, OutputComparison]]
    runner: str
    reference: str

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "runner": self.runner, "reference": self.reference,
                "iterations": [{name: c.to_json() for name, c in it.items()}
                               for it in self.iterations]}


def run_compare(setup: CompareSetup, log: PolygraphyLog) -> CompareResult:
    from kiln.onnx import read_onnx

    graph = read_onnx(setup.model)
    specs = specs_from_graph(graph, setup.shapes)
    feeds = _inputs(setup, specs, log)
    runner = _kiln_runner(setup, log)
    outputs = _run_all(runner, runner.name, feeds, log)
    if setup.save_outputs:
        _save(setup.save_outputs, feeds[0], outputs[0])
        log.info(f"Saved inputs and {runner.name} outputs to {setup.save_outputs}")
    ref_name, references = _reference(setup, feeds, log)
    results = []
    for i, (out, ref) in enumerate(zip(outputs, references)):
        results.append(_compare_iteration(runner.name, ref_name, out, ref, setup, log,
                                          i if len(outputs) > 1 else None))
        if setup.fail_fast and not all(c.passed for c in results[-1].values()):
            break
    passed_iterations = sum(all(c.passed for c in it.values()) for it in results)
    total = len(outputs)
    passed = passed_iterations == total
    summary = (f"Accuracy Summary | {runner.name} vs. {ref_name} | Passed: "
               f"{passed_iterations}/{total} iterations | Pass Rate: "
               f"{100.0 * passed_iterations / total:.1f}%")
    (log.info if passed else log.error)(summary)
    return CompareResult(passed, results, runner.name, ref_name)


def _inputs(setup: CompareSetup, specs: list[InputSpec], log: PolygraphyLog
            ) -> list[dict[str, np.ndarray]]:
    if setup.input_files:
        given = load_input_files(setup.input_files, specs)
        feeds = random_inputs(specs, setup.seed)
        missing = [s for s in specs if s.name not in given]
        for spec in missing:
            log.warning(f"Input {spec.name!r} is not in {setup.input_files}; using random "
                        f"values in {spec.values_text()}")
        feeds.update(given)
        if setup.iterations > 1:
            log.warning("--iterations applies to random inputs; the loaded inputs are one "
                        "iteration")
        return [feeds]
    log.info("Generating random inputs (seed " + str(setup.seed) + "):")
    with log.indent():
        for spec in specs:
            log.info(spec.describe())
    return [random_inputs(specs, setup.seed + i) for i in range(setup.iterations)]


def _kiln_runner(setup: CompareSetup, log: PolygraphyLog) -> KilnRunner:
    if setup.engine_path:
        engine = Engine.load(setup.engine_path)
        name = f"kiln-{engine.precision}"
        log.info(f"{name:<20} | Loaded engine {setup.engine_path}")
    else:
        started = time.perf_counter()
        engine = build_engine(setup.model, setup.config)
        name = f"kiln-{engine.precision}"
        log.info(f"{name:<20} | Built engine in {time.perf_counter() - started:.3f} s")
    return KilnRunner(engine, name)


def _run_all(runner: Any, name: str, feeds: list[dict[str, np.ndarray]],
             log: PolygraphyLog) -> list[dict[str, np.ndarray]]:
    log.info(f"{name:<20} | Activating and starting inference")
    outputs, started = [], time.perf_counter()
    for feed in feeds:
        runner.set_inputs(feed)
        runner.compute()
        runner.d2h()
        outputs.append(runner.outputs())
    ms = (time.perf_counter() - started) * 1000.0
    log.info(f"{name:<20} | Completed {len(feeds)} iteration(s) in {ms:.4g} ms | Average "
             f"inference time: {ms / len(feeds):.4g} ms.")
    runner.close()
    return outputs


def _reference(setup: CompareSetup, feeds: list[dict[str, np.ndarray]], log: PolygraphyLog
               ) -> tuple[str, list[dict[str, np.ndarray]]]:
    if setup.reference_outputs:
        saved = read_npz(Path(setup.reference_outputs), "output.")
        if len(feeds) > 1:
            raise KilnError("--load-outputs holds one set of outputs; it cannot be compared "
                            f"over --iterations={len(feeds)}",
                            hint="drop --iterations, or give the matching --inputs")
        log.info(f"{'saved-outputs':<20} | Loaded {len(saved)} output(s) from "
                 f"{setup.reference_outputs}")
        return "saved-outputs", [saved]
    if setup.reference == "ort":
        runner: Any = OrtRunner(setup.model, "onnxrt-runner", provider="cpu")
        return "onnxrt-runner", _run_all(runner, "onnxrt-runner", feeds, log)
    plain = setup.reference == "kiln-unoptimized"
    config = dataclasses.replace(setup.config, precision="fp32", optimize=not plain,
                                 optimization_level=0 if plain else
                                 setup.config.optimization_level, layer_precisions={})
    engine = build_engine(setup.model, config)
    name = f"{setup.reference}-reference"
    return name, _run_all(KilnRunner(engine, name), name, feeds, log)


def _save(path: str, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    arrays = {f"input.{k}": np.asarray(v) for k, v in feeds.items()}
    arrays.update({f"output.{k}": np.asarray(v) for k, v in outputs.items()})
    try:
        np.savez(path, **arrays)
    except OSError as exc:
        raise KilnError(f"cannot write {path}: {exc}") from None


def _compare_iteration(name0: str, name1: str, out: dict[str, np.ndarray],
                       ref: dict[str, np.ndarray], setup: CompareSetup, log: PolygraphyLog,
                       iteration: int | None) -> dict[str, OutputComparison]:
    title = f"Accuracy Comparison | {name0} vs. {name1}"
    log.info(title if iteration is None else f"{title} | Iteration: {iteration}")
    with log.indent():
        for missing in (n for n in out if n not in ref):
            log.warning(f"For output: '{missing}' [{name0}], skipping corresponding output "
                        f"'{missing}' [{name1}], since the output was not found")
        compared = compare_outputs(out, ref, setup.tolerances)
        if not compared:
            raise KilnError(
                f"no common outputs: {name0} has {', '.join(out) or 'none'}, {name1} has "
                f"{', '.join(ref) or 'none'}",
                hint="check that the saved outputs belong to this model")
        for result in compared.values():
            _log_output(result, name0, name1, setup.show_histograms, log)
            if setup.fail_fast and not result.passed:
                break
        bad = [n for n, c in compared.items() if not c.passed]
        if bad:
            log.error(f"FAILED | Mismatched outputs: {bad}")
        else:
            log.info(f"PASSED | All outputs matched | Outputs: {list(compared)}")
    return compared


def _log_output(c: OutputComparison, name0: str, name1: str, histograms: bool,
                log: PolygraphyLog) -> None:
    arrays = c.arrays
    out, ref = arrays.get("out"), arrays.get("ref")
    described = (f"'{c.name}' (dtype={_dtype(out)}, shape={_shape(out)}) with '{c.name}' "
                 f"(dtype={_dtype(ref)}, shape={_shape(ref)})") if out is not None else \
        f"'{c.name}'"
    log.info(f"Comparing Output: {described}")
    with log.indent():
        log.info(f"Tolerance: [abs={c.atol:.5g}, rel={c.rtol:.5g}] | Checking "
                 f"{c.check_error_stat} error")
        if c.shape_mismatch:
            log.error(f"FAILED | Output: `{c.name}` | Will not compare outputs of different "
                      f"shapes.\nNote: {c.shape_mismatch}.")
            return
        show = histograms or not c.passed  # Polygraphy shows histograms on failure
        both = np.concatenate([out.reshape(-1), ref.reshape(-1)]).astype(np.float64) \
            if out.dtype != bool else None
        finite = both[np.isfinite(both)] if both is not None else None
        hist_range = (float(finite.min()), float(finite.max())) \
            if finite is not None and finite.size else None
        for runner, array in ((name0, out), (name1, ref)):
            log.info(f"{runner}: {c.name} | Stats: {stats_text(array)}")
            if show:
                with log.indent():
                    for line in histogram_lines(array, hist_range):
                        log.info(line)
        log.info(f"Error Metrics: {c.name}")
        with log.indent():
            note = " (requirements may be lower if both abs/rel tolerances are set)" \
                if c.check_error_stat == "elemwise" else ""
            log.info(f"Minimum Required Tolerance: {c.check_error_stat} error | "
                     f"[abs={c.required_atol:.5g}] OR [rel={c.required_rtol:.5g}]{note}")
            for label, key in (("Absolute Difference", "absdiff"),
                               ("Relative Difference", "reldiff")):
                log.info(f"{label} | Stats: {stats_text(arrays[key])}")
                if show:
                    with log.indent():
                        for line in histogram_lines(arrays[key]):
                            log.info(line)
            if c.check_error_stat == "elemwise" and c.mismatches:
                total = arrays["absdiff"].size
                log.info(f"Mismatched elements: {c.mismatches} / {total} "
                         f"({100.0 * c.mismatches / total:.3g}%)")
            text = metrics_text(c.metrics)
            if text:
                log.info(text)
        if c.passed:
            log.info(f"PASSED | Output: '{c.name}' | Difference is within tolerance "
                     f"(rel={c.rtol:g}, abs={c.atol:g})")
        else:
            log.error(f"FAILED | Output: '{c.name}' | Difference exceeds tolerance "
                      f"(rel={c.rtol:g}, abs={c.atol:g})")


def _dtype(array: np.ndarray | None) -> str:
    return "?" if array is None else str(array.dtype)


def _shape(array: np.ndarray | None) -> str:
    return "?" if array is None else str(tuple(int(d) for d in array.shape))
