"""The builder: ONNX model -> optimized graph -> layers with tactics -> Engine.

    engine = build_engine("model.onnx", BuilderConfig(precision="fp16"))

Stages, each reported to `on_stage`: read (parse, infer shapes, check every op is
supported), optimize (the pass pipeline), precision, lower (tactics), probe (one run at
the first profile's opt shape, for shapes and memory).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch

import kiln
from kiln.build import precision_choice
from kiln.build.config import BuilderConfig
from kiln.build.lower import Lowering, place_constants
from kiln.build.placement import assign_placement
from kiln.build.precision import assign_precision, mark_model_dtypes
from kiln.build.profiles import Profile, resolve_profile
from kiln.build.timing_cache import TimingCache
from kiln.build.tuner import tune
from kiln.engine.engine import Engine, IOSpec
from kiln.engine.plan import FORMAT, FORMAT_VERSION
from kiln.ir import Graph
from kiln.kernels import Target
from kiln.onnx import load_model, read_onnx
from kiln.passes import PassContext, run_pipeline
from kiln.passes.eliminate_dead import eliminate_dead
from kiln.quant import stage as quant_stage

Stage = Callable[[str], None]


def build_engine(
    model: str | os.PathLike | bytes | onnx.ModelProto | Graph,
    config: BuilderConfig | None = None,
    *,
    on_stage: Stage | None = None,
) -> Engine:
    config = config or BuilderConfig()
    if precision_choice.applies(config, model):
        return precision_choice.build_fastest(
            config, lambda c: _build(model, c, on_stage or (lambda _name: None)))
    return _build(model, config, on_stage or (lambda _name: None))


def _build(model: Any, config: BuilderConfig, stage: Stage) -> Engine:
    started = time.perf_counter()
    device = config.torch_device()

    stage("read")
    graph = model if isinstance(model, Graph) else read_onnx(model)
    inputs = [IOSpec(v.name, v.dtype, list(v.shape) if v.shape is not None else None, v.kind)
              for v in graph.inputs]
    outputs = [IOSpec(v.name, v.dtype, None, v.kind) for v in graph.outputs]
    profiles = [resolve_profile(graph.inputs, p.get("min"), p.get("opt"), p.get("max"))
                for p in config.profiles] or [resolve_profile(graph.inputs)]
    fixed = _fixed_shapes(profiles)
    if fixed and not isinstance(model, Graph):
        # one shape per input: infer every shape from it, so shape arithmetic folds away
        graph = read_onnx(specialize_inputs(load_model(model), fixed))
    mark_model_dtypes(graph)
    quantization = quant_stage.prepare(graph, config.precision, config.calibrator, device, stage)

    stage("optimize")
    passes = PassContext(precision=config.precision, device=device.type,
                         options={"layer_precisions": config.layer_precisions})
    if config.optimize:
        run_pipeline(graph, passes)
    quant_stage.apply(graph, quantization, passes)

    stage("precision")
    precision = assign_precision(graph, config.float_precision, config.layer_precisions)
    quantized = quant_stage.finalize(graph, quantization)
    eliminate_dead(graph, passes)  # constants that precision replaced with converted copies
    assign_placement(graph, device.type)
    place_constants(graph)

    stage("lower")
    target = Target(device, config.precision)
    lowering = Lowering(target, config.optimization_level)
    plan_graph = lowering.graph(graph)
    plan: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kiln_version": kiln.__version__,
        "torch_version": torch.__version__,
        "device": _target_description(device),
        "build": {
            "precision": config.precision,
            **({"fallback_precision": config.fallback_precision}
               if config.precision in ("int8", "fp8") else {}),
            "source": _source_name(model),
            "producer": graph.meta.get("producer", ""),
            "optimization_level": config.optimization_level,
            "optimize": config.optimize,
            "passes": passes.applied,
            "precision_layers": precision,
            **({"quantization": quantized} if quantized else {}),
        },
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
        "profiles": [p.to_json() for p in profiles],
        "graph": plan_graph,
    }
    engine = Engine(plan, lowering.tensors)

    stage("probe")
    plan["memory"], layouts = _probe(engine, profiles[0], config.probe_inputs, device)
    if config.optimization_level >= 1 and "value_shapes" in plan:
        stage("tune")
        engine = _tune(engine, graph, lowering, config, target, profiles[0], layouts)
    engine.plan["build"]["seconds"] = round(time.perf_counter() - started, 3)
    return engine


def _tune(engine: Engine, graph: Graph, lowering: Lowering, config: BuilderConfig,
          target: Target, profile: Profile, layouts: dict[str, list[int]]) -> Engine:
    """Times the candidate tactics; lowers again if the fastest differ from the guesses."""
    cache = TimingCache(config.timing_cache)
    report = tune(lowering.layers, engine.plan["value_shapes"], target,
                  config.optimization_level, cache, layouts)
    cache.save()
    plan = engine.plan
    if any(report.choices.get(s.name, s.tactic) != s.tactic for s in lowering.layers):
        relowered = Lowering(target, config.optimization_level, report.choices)
        plan["graph"] = relowered.graph(graph)
        engine = Engine(plan, relowered.tensors)
        plan["memory"], _ = _probe(engine, profile, config.probe_inputs, target.device)
    for layer in engine.layers():
        if layer["name"] in report.timings:
            layer["timings"] = report.timings[layer["name"]]
    plan["build"]["tuning"] = {"timed": report.timed, "cached": report.cached,
                               "seconds": round(report.seconds, 3),
                               "skipped": report.skipped}
    return engine


def _fixed_shapes(profiles: list[Profile]) -> dict[str, list[int]]:
    """Input shapes a single profile pins down completely (min == max on every axis)."""
    if len(profiles) != 1:
        return {}
    return {name: [d.min for d in dims] for name, dims in profiles[0].dims.items()
            if all(d.min == d.max for d in dims)}


def specialize_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy of `model` whose inputs declare these concrete shapes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        if value.name in shapes and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[value.name]:
                dims.add().dim_value = size
    return copy


def _target_description(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(index),
                "capability": f"{major}.{minor}"}
    return {"kind": "cpu", "name": platform.processor() or platform.machine() or "cpu",
            "capability": None}


def _source_name(model: Any) -> str | None:
    if isinstance(model, str | os.PathLike):
        return os.path.basename(os.fspath(model))
    return None


def probe_inputs(engine: Engine, profile: Profile, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at the profile's opt shape: normal floats, zero integers, false booleans."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in engine.inputs:
        if spec.kind != "tensor" or spec.dtype is None or spec.dtype.numpy is None:
            continue
        shape = profile.opt_shape(spec.name) if spec.name in profile.dims else []
        if spec.dtype.is_float:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype.numpy)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype.numpy)
    return feeds


def _probe(engine: Engine, profile: Profile, given: dict[str, Any] | None,
           device: torch.device) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """One traced run: activation memory (planned with reuse), every value's shape, and
    the memory order of the values that arrive as permuted views (for the tuner)."""
    from kiln.ops.tensors import to_torch
    from kiln.runtime.bind import compile_plan
    from kiln.runtime.memory import peak_live, plan_arena, trace

    weights = engine.weight_bytes()
    report: dict[str, Any] = {"weights_bytes": weights}
    feeds = given if given is not None else probe_inputs(engine, profile)
    layouts: dict[str, list[int]] = {}
    if set(feeds) != set(engine.input_names):
        report["note"] = "no probe run: some inputs cannot be generated (give real ones)"
        return report, layouts
    try:
        program = compile_plan(engine.plan["graph"], engine.tensors, device)
        with torch.inference_mode():
            buffers, shapes = trace(program, {k: to_torch(v, device) for k, v in feeds.items()},
                                    layouts)
    except Exception as exc:  # a probe failure must not fail the build
        hint = "" if given is not None else (
            "; the generated inputs may not suit the model (a sample rate, token ids): give "
            "real ones with --loadInputs, so that layers are tuned and memory planned")
        report["note"] = f"probe run at the opt shape failed: {str(exc)[:300]}{hint}"
        return report, layouts
    report.update({
        "probe_shapes": {k: profile.opt_shape(k) for k in profile.dims},
        "activations_planned_bytes": plan_arena(buffers),
        "activations_peak_live_bytes": peak_live(buffers),
        "activations_total_bytes": sum(b.size for b in buffers),
    })
    engine.plan["value_shapes"] = shapes
    return report, layouts


__all__ = ["build_engine", "probe_inputs"]
