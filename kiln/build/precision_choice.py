"""INT8/FP8 allowed, not forced: each quantized layer keeps its low precision only where it
is faster than the same layer in the fallback precision (TensorRT's default for `--int8
--fp16`, `--precisionConstraints=none`; `obey` keeps every quantizable layer quantized).

The calibrated build is timed layer by layer beside a build in the fallback precision, at
the first profile's opt shape; quantized layers that lose are pinned to the fallback
precision and the engine is built again, reusing the calibration. Layers timed one by one
do not add up to the engine: the quantize steps at precision boundaries fall between them,
so a second choice counts those (precision_boundaries) and, where it differs, is built
too, and the quantized build itself stands as a candidate. The candidates are timed
whole beside the fallback engine and the fastest is kept; where the fallback wins (or
every layer loses), the fallback build is the engine: asking for INT8 never gives an
engine slower than not asking. The choices, with the times, go into the plan
(`build.precision_choice`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.build.config import BuilderConfig
from kiln.build.precision_boundaries import QUANTIZED_OPS, Boundaries, boundaries
from kiln.engine.engine import Engine

if TYPE_CHECKING:
    from kiln.runtime.profile import LayerTime

MARGIN = 0.02  # the fallback engine must win by this much: whole-run timings wobble
Build = Callable[[BuilderConfig], Engine]


def applies(config: BuilderConfig, model: Any) -> bool:
    """Implicit INT8/FP8 builds on CUDA by default; `obey` or a Graph (built in place,
    so only once) never; `none` anywhere."""
    from kiln.ir import Graph

    if config.precision not in ("int8", "fp8") or config.calibrator is None:
        return False
    if isinstance(model, Graph) or config.optimization_level < 1:
        return False
    mode = config.precision_constraints
    if mode == "auto":
        return config.torch_device().type == "cuda"
    return mode == "none"


def build_fastest(config: BuilderConfig, build: Build) -> Engine:
    fallback = config.fallback_precision
    with tempfile.TemporaryDirectory() as folder:
        config = _shared_caches(config, Path(folder))
        quantized = build(config)
        floating = build(dataclasses.replace(config, precision=fallback, calibrator=None))
        profile = layer_profile(quantized)
        low = layer_times(quantized, profile)
        high = layer_times(floating, layer_profile(floating))
        times = {name: (ms, high[name]) for name, ms in low.items() if name in high}
        model = boundary_model(quantized, profile)
        choices = pinned_sets(times, model)

        def candidate(names: list[str]) -> Engine:
            if not names:
                return quantized
            if set(names) >= set(low) and not config.layer_precisions:
                return floating  # every quantized layer in the fallback precision
            return _pinned(config, build, names)

        engines = {label: candidate(names) for label, names in choices.items()}
        whole = {fallback: engine_ms(floating)}
        whole.update({label: whole[fallback] if engine is floating else engine_ms(engine)
                      for label, engine in engines.items()})
        label = min(engines, key=whole.__getitem__)
        engine, slower = engines[label], choices[label]
        if whole[fallback] < (1 - MARGIN) * whole[label]:
            slower = sorted(low)  # with the layers the fallback build has no twin for
            engine = candidate(slower)
    engine.plan["build"]["precision_choice"] = {
        "constraints": config.precision_constraints,
        "kept_in_" + fallback: slower,
        "engine_ms": {k: round(v, 5) for k, v in whole.items()},
        "layer_ms": {n: {config.precision: round(q, 5), fallback: round(f, 5)}
                     for n, (q, f) in sorted(times.items())},
        **({"quantize_ms_per_melement": round(model.ms_per_element * 1e6, 5)} if model else {}),
    }
    if engine is not quantized:
        _report_calibration(engine, quantized, folder)
    return engine


def _report_calibration(engine: Engine, calibrated: Engine, folder: str) -> None:
    """The engine chosen reports the calibration as the first build ran it: a rebuild read
    the cache that build wrote (a temporary one, gone now, unless the user named it)."""
    report = dict(calibrated.plan["build"].get("quantization") or {})
    if str(report.get("cache_written", "")).startswith(folder):
        del report["cache_written"]
    final = engine.plan["build"].get("quantization") or {}
    report["quantized_layers"] = final.get("quantized_layers", 0)
    report.pop("skipped", None)
    if final.get("skipped"):
        report["skipped"] = final["skipped"]
    engine.plan["build"]["quantization"] = report


def pinned_sets(times: dict[str, tuple[float, float]], model: Boundaries | None
                ) -> dict[str, list[str]]:
    """The layers to pin, by candidate: those slower alone ("mixed"); where the quantized
    engine ran quantize steps to price them by and the answer differs, the set that counts
    the steps at precision boundaries ("mixed_boundaries"); and where both pin some layers
    but some layer wins alone, none ("all": the quantized build, timed whole already
    built)."""
    choices = {"mixed": sorted(name for name, (q, f) in times.items() if f < q)}
    if model is not None:
        counted = model.search(times, choices["mixed"])
        if counted != choices["mixed"]:
            choices["mixed_boundaries"] = counted
    if len(choices["mixed"]) < len(times) and all(choices.values()):
        # the quantized build as it is: lone layers miss what it gains whole (BERT-base in
        # FP8 ran 1.59 ms with every layer kept, 1.66 ms with the boundary model's choice)
        choices["all"] = []
    return choices


def _shared_caches(config: BuilderConfig, folder: Path) -> BuilderConfig:
    """One calibration and one timing cache for all the candidate builds (temporary ones in
    `folder` where the user gave none): a rebuild with pinned layers times only those."""
    config = calibrate_once(config, folder / "calibration.cache")
    if config.timing_cache is None:
        config = dataclasses.replace(config, timing_cache=str(folder / "timing.json"))
    return config


def _pinned(config: BuilderConfig, build: Build, names: list[str]) -> Engine:
    """The build with these model layers in the fallback precision (the user's own
    --layerPrecisions still win)."""
    overrides = {**{n: config.fallback_precision for n in names}, **config.layer_precisions}
    return build(dataclasses.replace(config, layer_precisions=overrides))


def engine_ms(engine: Engine, runs: int = 20) -> float:
    """Median milliseconds of a whole run at the first profile's opt shape, as a user's
    context runs it (a CUDA graph replay on CUDA)."""
    import statistics
    import time

    import torch

    from kiln.runtime import ExecutionContext

    context = ExecutionContext(engine)
    feeds = {name: torch.as_tensor(array, device=context.device)  # inputs already there
             for name, array in _probe_feeds(engine).items()}
    cuda = context.device.type == "cuda"
    times = []
    for i in range(runs + 3):  # three warm-ups: cuDNN autotuning, the graph's capture
        start = time.perf_counter()
        context.run(feeds)
        if cuda:
            torch.cuda.synchronize(context.device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def layer_profile(engine: Engine) -> list[LayerTime]:
    """Every layer of the engine at the first profile's opt shape, each as a CUDA graph
    replays it alone."""
    from kiln.runtime import ExecutionContext
    from kiln.runtime.profile import profile_layers

    return profile_layers(ExecutionContext(engine), _probe_feeds(engine), runs=3, warmup=2,
                          replayed=True)


def layer_times(engine: Engine, timed: list[LayerTime]) -> dict[str, float]:
    """Milliseconds per model layer (its first fused node's name) of the engine's quantized
    layers, or of all layers of a float engine."""
    names = {layer["name"]: model_layer_name(layer) for layer in engine.layers()}
    quantized = any(t.op in QUANTIZED_OPS for t in timed)
    return {names.get(t.name, t.name): t.ms for t in timed
            if not quantized or t.op in QUANTIZED_OPS}


def boundary_model(engine: Engine, timed: list[LayerTime]) -> Boundaries | None:
    """The quantize steps between the quantized engine's layers, priced by its own."""
    layers = engine.layers()
    return boundaries(layers, timed, {layer["name"]: model_layer_name(layer)
                                      for layer in layers})


def _probe_feeds(engine: Engine) -> dict[str, Any]:
    """Inputs at the first profile's opt shape, as the build's probe makes them."""
    from kiln.build.builder import probe_inputs
    from kiln.build.profiles import Profile

    return probe_inputs(engine, Profile.from_json(engine.plan["profiles"][0]))


def model_layer_name(layer: dict) -> str:
    """The model's name for a layer: its first fused node (the Conv/MatMul it came from)."""
    fused = layer.get("fused") or []
    return fused[0] if fused else layer["name"]


def calibrate_once(config: BuilderConfig, cache: Path) -> BuilderConfig:
    """For several builds of one model: the first calibrates and writes a cache (`cache`,
    unless the calibrator names one) that the later ones read."""
    calibrator = config.calibrator
    if config.precision not in ("int8", "fp8") or calibrator is None or calibrator.cache:
        return config
    return dataclasses.replace(config, calibrator=dataclasses.replace(calibrator,
                                                                      cache=str(cache)))
