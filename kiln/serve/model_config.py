"""config.pbtxt: read against Triton's model-configuration schema, completed from the engine,
checked against it, and turned into what the server acts on (scheduling, instances, build).

Triton's fields kiln serve acts on: name, platform/backend (kiln or onnxruntime), max_batch_size,
input/output (name, data_type, dims, optional), dynamic_batching (preferred_batch_size,
max_queue_delay_microseconds, default_queue_policy), instance_group (count, kind, gpus),
version_policy, default_model_filename, parameters, optimization.cuda.graphs. Fields whose
meaning it cannot honour (sequence and ensemble scheduling, reshape, batch inputs, decoupled
models, priorities) are refused at load with a message; the rest (warmup, rate limiter, other
optimization hints) are kept in the configuration and otherwise ignored.

A model directory without config.pbtxt, or a config that lists no inputs, is completed from
the engine as Triton's auto-complete does: inputs and outputs from the engine, and, with no
config.pbtxt at all, max_batch_size 4 and dynamic batching when every input has a dynamic
first axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from google.protobuf import text_format

from kiln.build import BuilderConfig
from kiln.build.profiles import parse_shapes
from kiln.engine.engine import Engine, IOSpec
from kiln.errors import KilnError
from kiln.serve import datatypes
from kiln.serve.errors import ServeError, Unsupported
from kiln.serve.proto import pb

CONFIG_FILE = "config.pbtxt"
DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size
PLATFORMS = ("", "kiln", "onnxruntime", "onnxruntime_onnx")


def read_config(model_dir: Path):
    """The directory's config.pbtxt parsed into a ModelConfig (an empty one, named for the
    directory, when there is no file)."""
    config = pb.ModelConfig()
    path = model_dir / CONFIG_FILE
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            raise ServeError(f"{model_dir.name}/{CONFIG_FILE} is not a valid model "
                             f"configuration: {exc}",
                             hint="write it in protobuf text format against Triton's "
                             "model_config.proto (kiln/serve/proto/model_config.proto)") from None
    elif not model_dir.is_dir():
        raise ServeError(f"{model_dir} is not a model directory", code="NOT_FOUND")
    else:
        config.max_batch_size = -1  # "not given": complete() decides
    if not config.name:
        config.name = model_dir.name
    elif config.name != model_dir.name:
        raise ServeError(f"{model_dir.name}/{CONFIG_FILE} names the model {config.name!r}, "
                         f"but its directory is {model_dir.name!r}",
                         hint="make the name match the directory, or leave it out")
    check_supported(config)
    return config


def checked_override(config, name: str):
    """A configuration given with a load request, in place of config.pbtxt."""
    if not config.name:
        config.name = name
    elif config.name != name:
        raise ServeError(f"the load request's config names the model {config.name!r}, but it "
                         f"loads {name!r}", hint="make the names match, or leave it out")
    check_supported(config)
    return config


def check_supported(config) -> None:
    """Refuses settings whose meaning kiln serve cannot honour."""
    name = config.name
    if config.platform not in PLATFORMS or config.backend not in PLATFORMS:
        raise Unsupported(f"model {name!r} asks for platform {config.platform!r} / backend "
                          f"{config.backend!r}; kiln serve runs kiln engines and ONNX models",
                          hint="set backend: \"kiln\" (or leave platform and backend out)")
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling in ("sequence_batching", "ensemble_scheduling"):
        raise Unsupported(f"model {name!r} uses {scheduling}, which kiln serve does not "
                          "support", hint="use dynamic_batching or no scheduler")
    refused = {
        "batch_input": bool(config.batch_input),
        "batch_output": bool(config.batch_output),
        "model_transaction_policy.decoupled": config.model_transaction_policy.decoupled,
        "dynamic_batching.priority_levels": config.dynamic_batching.priority_levels > 0,
        "reshape": any(t.HasField("reshape") for t in [*config.input, *config.output]),
        "is_shape_tensor": any(t.is_shape_tensor for t in [*config.input, *config.output]),
    }
    for field, used in refused.items():
        if used:
            raise Unsupported(f"model {name!r} sets {field}, which kiln serve does not support",
                              hint=f"remove {field} from its {CONFIG_FILE}")
    if config.max_batch_size < -1:
        raise ServeError(f"model {name!r}: max_batch_size must be >= 0, got "
                         f"{config.max_batch_size}")


def complete(config, engine: Engine, devices: list[str]):
    """Fills what the config leaves out from the engine and the instances' devices (as
    Triton reports a completed configuration), then checks config and engine agree."""
    if not config.backend and not config.platform:
        config.backend = "kiln"
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.instance_group:
        kind = "KIND_GPU" if devices[0].startswith("cuda") else "KIND_CPU"
        group = config.instance_group.add(name=config.name, count=1,
                                          kind=pb.ModelInstanceGroup.Kind.Value(kind))
        if kind == "KIND_GPU":
            group.gpus.extend(int(d.split(":")[1]) for d in devices)
    if config.max_batch_size == -1:  # no config.pbtxt
        batchable = all(_dynamic_first_axis(s) for s in engine.inputs)
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE if batchable else 0
        if batchable:
            config.dynamic_batching.SetInParent()
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        raise ServeError(f"model {config.name!r} enables dynamic_batching with max_batch_size 0",
                         hint="set max_batch_size to the largest batch the engine takes")
    batch = config.max_batch_size > 0
    if not config.input:
        for spec in engine.inputs:
            config.input.add(name=spec.name, data_type=_config_type(spec, config.name),
                             dims=_config_dims(spec.shape, batch))
    if not config.output:
        static = all(_static_after_batch(s.shape, batch) for s in engine.inputs)
        probed = engine.plan.get("value_shapes", {})
        for spec in engine.outputs:
            config.output.add(name=spec.name, data_type=_config_type(spec, config.name),
                              dims=_output_dims(probed.get(spec.name), batch, static))
    _check_against_engine(config, engine)
    return config


def _dynamic_first_axis(spec: IOSpec) -> bool:
    return bool(spec.shape) and not isinstance(spec.shape[0], int)


def _static_after_batch(shape: list | None, batch: bool) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape[int(batch):])


def _config_type(spec: IOSpec, model: str) -> int:
    what = f"model {model!r} {spec.name!r}"
    return pb.DataType.Value(datatypes.from_kiln(spec.dtype, what).config_name)


def _config_dims(shape: list | None, batch: bool) -> list[int]:
    if shape is None:
        return [-1]
    return [d if isinstance(d, int) else -1 for d in shape[int(batch):]]


def _output_dims(probed: list[int] | None, batch: bool, static: bool) -> list[int]:
    """An output's dims: from the build's probe run where every input is static past the
    batch axis (so the output is too), else -1 past the batch axis."""
    if probed is None:
        return [-1]
    dims = list(probed[int(batch):])
    return dims if static else [-1] * len(dims)


def _check_against_engine(config, engine: Engine) -> None:
    name = config.name
    batch = config.max_batch_size > 0
    inputs = {s.name: s for s in engine.inputs}
    outputs = {s.name: s for s in engine.outputs}
    for side, tensors, specs in (("input", config.input, inputs), ("output", config.output,
                                                                      outputs)):
        for tensor in tensors:
            spec = specs.get(tensor.name)
            if spec is None:
                raise ServeError(f"model {name!r}: {CONFIG_FILE} lists {side} {tensor.name!r}, "
                                 f"which the engine does not have; its {side}s are "
                                 f"{', '.join(map(repr, specs))}")
            _check_tensor(name, side, tensor, spec, batch)
    listed = {t.name for t in config.input}
    missing = [n for n in inputs if n not in listed]
    if missing:
        raise ServeError(f"model {name!r}: the engine's input(s) {', '.join(map(repr, missing))} "
                         f"are not in {CONFIG_FILE}", hint="list every input, or none")
    if batch:
        _check_batch_profiles(config, engine)


def _check_tensor(model: str, side: str, tensor, spec: IOSpec, batch: bool) -> None:
    what = f"model {model!r} {side} {tensor.name!r}"
    want = datatypes.from_kiln(spec.dtype, what)
    given = pb.DataType.Name(tensor.data_type)
    if given != want.config_name:
        raise ServeError(f"{what} is {given} in {CONFIG_FILE}, but the engine takes "
                         f"{want.config_name}", hint=f"set data_type: {want.config_name}")
    if spec.shape is None or side == "output":
        return
    dims = ([-1] if batch else []) + list(tensor.dims)
    if len(dims) != len(spec.shape):
        hint = ("dims leave out the batch axis when max_batch_size > 0" if batch
                else "with max_batch_size 0, dims include every axis")
        raise ServeError(f"{what} has dims {list(tensor.dims)} in {CONFIG_FILE}, rank "
                         f"{len(dims)} with the batch axis; the engine takes {spec.shape_text()}",
                         hint=hint)
    for axis, (d, e) in enumerate(zip(dims, spec.shape)):
        if isinstance(e, int) and d not in (-1, e):
            raise ServeError(f"{what}: axis {axis} is {d} in {CONFIG_FILE}, but the engine "
                             f"fixes it at {e} ({spec.shape_text()})")
    if batch and isinstance(spec.shape[0], int):
        raise ServeError(f"{what}: the engine fixes the batch axis at {spec.shape[0]}, so it "
                         "cannot batch requests", hint="set max_batch_size: 0, or rebuild the "
                         "engine with a dynamic first axis")


def _check_batch_profiles(config, engine: Engine) -> None:
    """Some profile must take every batch size from 1 to max_batch_size."""
    want = config.max_batch_size
    for profile in engine.profiles:
        ok = all(r[0].min <= 1 and (r[0].max is None or r[0].max >= want)
                 for r in profile.dims.values() if r)
        if ok:
            return
    ranges = "; ".join(", ".join(f"{n} batch {r[0].text()}" for n, r in p.dims.items() if r)
                       for p in engine.profiles)
    raise ServeError(f"model {config.name!r}: max_batch_size is {want}, but the engine's "
                     f"profiles take {ranges}",
                     hint=f"lower max_batch_size, or rebuild with --minShapes batch 1 and "
                     f"--maxShapes batch {want}")


# --------------------------------------------------------------------- what the server uses
@dataclass(frozen=True)
class Scheduling:
    """How requests wait and are grouped (Triton's dynamic_batching and queue policy)."""

    max_batch_size: int
    dynamic: bool
    preferred: tuple[int, ...]
    max_delay_ns: int
    max_queue_size: int
    default_timeout_ns: int  # 0: none
    allow_timeout_override: bool
    reject_on_timeout: bool  # REJECT; DELAY keeps the request


def scheduling(config, default_max_queue: int) -> Scheduling:
    dyn = config.dynamic_batching
    policy = dyn.default_queue_policy
    preferred = tuple(sorted(set(dyn.preferred_batch_size)))
    if any(p < 1 or p > config.max_batch_size for p in preferred):
        raise ServeError(f"model {config.name!r}: preferred_batch_size {list(preferred)} must "
                         f"lie in 1..max_batch_size ({config.max_batch_size})")
    return Scheduling(
        max_batch_size=config.max_batch_size,
        dynamic=config.HasField("dynamic_batching"),
        preferred=preferred,
        max_delay_ns=dyn.max_queue_delay_microseconds * 1000,
        max_queue_size=policy.max_queue_size or default_max_queue,
        default_timeout_ns=policy.default_timeout_microseconds * 1000,
        allow_timeout_override=policy.allow_timeout_override,
        reject_on_timeout=policy.timeout_action == pb.ModelQueuePolicy.REJECT,
    )


def instance_devices(config, engine_kind: str | None) -> list[str]:
    """One device per model instance ("cpu", "cuda:0", ...), from instance_group. An
    engine file's device kind (engine_kind) must agree; None: an ONNX model, built to fit."""
    gpus = torch.cuda.device_count()
    kinds = pb.ModelInstanceGroup.Kind
    devices: list[str] = []
    groups = list(config.instance_group) or [pb.ModelInstanceGroup()]
    for group in groups:
        kind = kinds.Name(group.kind)
        if kind == "KIND_MODEL":
            raise Unsupported(f"model {config.name!r}: instance_group kind KIND_MODEL is not "
                              "supported", hint="use KIND_CPU or KIND_GPU")
        if kind == "KIND_AUTO":
            use_gpu = gpus > 0 and engine_kind != "cpu"
            kind = "KIND_GPU" if use_gpu else "KIND_CPU"
        count = group.count or 1
        if kind == "KIND_CPU":
            devices += ["cpu"] * count
            continue
        if gpus == 0:
            raise ServeError(f"model {config.name!r}: instance_group asks for KIND_GPU, but "
                             "this machine has no CUDA device", hint="use kind: KIND_CPU")
        ids = list(group.gpus) or list(range(gpus))
        bad = [g for g in ids if not 0 <= g < gpus]
        if bad:
            raise ServeError(f"model {config.name!r}: instance_group names GPU(s) {bad}; this "
                             f"machine has {gpus}")
        devices += [f"cuda:{g}" for g in ids for _ in range(count)]
    kinds_used = {d.split(":")[0] for d in devices}
    if len(kinds_used) > 1:
        raise Unsupported(f"model {config.name!r}: instance groups mix CPU and GPU instances",
                          hint="give every instance_group of a model the same kind")
    if engine_kind is not None and kinds_used != {engine_kind}:
        raise ServeError(f"model {config.name!r}: the engine was built for {engine_kind}, but "
                         f"instance_group places it on {kinds_used.pop()}",
                         hint="rebuild the engine for that device, or change instance_group")
    return devices


def cuda_graphs(config, devices: list[str]) -> bool:
    """Whether instances replay CUDA graphs: only when optimization.cuda.graphs asks, as in
    Triton. Off by default because every batch size a batcher forms is another capture, and
    refused with several instances on one GPU: a capture on one instance's thread forbids
    the copies and allocations the others make meanwhile."""
    if not config.optimization.cuda.graphs:
        return False
    gpu = [d for d in devices if d.startswith("cuda")]
    if len(gpu) != len(set(gpu)):
        raise Unsupported(f"model {config.name!r} asks for CUDA graphs with several instances "
                          "on one GPU", hint="use one instance per GPU with "
                          "optimization { cuda { graphs: true } }, or turn graphs off")
    return bool(gpu)


def builder_config(config, device_kind: str) -> BuilderConfig:
    """How to build an ONNX model at load: precision and shape profile from the model's
    `parameters` (precision, min_shapes/opt_shapes/max_shapes in trtexec's spelling), or
    from an ONNX Runtime TensorRT accelerator's precision_mode and trt_profile_*_shapes."""
    settings = {k: v.string_value for k, v in config.parameters.items()}
    accelerators = config.optimization.execution_accelerators
    for accelerator in [*accelerators.gpu_execution_accelerator,
                        *accelerators.cpu_execution_accelerator]:
        if accelerator.name == "tensorrt":
            params = dict(accelerator.parameters)
            settings.setdefault("precision", params.get("precision_mode", "").lower())
            for bound in ("min", "opt", "max"):
                key = f"trt_profile_{bound}_shapes"
                if key in params:
                    settings.setdefault(f"{bound}_shapes", params[key])
    precision = settings.get("precision") or "fp32"
    shapes = {b: parse_shapes(settings.get(f"{b}_shapes"), f"parameters {b}_shapes")
              for b in ("min", "opt", "max")}
    profiles = [shapes] if any(shapes.values()) else []
    try:
        return BuilderConfig(precision=precision, device=device_kind, profiles=profiles)
    except KilnError as exc:
        raise ServeError(f"model {config.name!r}: {exc.message}", hint=exc.hint) from None
