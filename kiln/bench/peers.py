"""Peers: what kiln is measured against, by name (`--peers=ort,kiln-unoptimized,kiln-fp16`).

| name | what runs |
|---|---|
| `kiln` | the engine of this command (its build flags, or the .kiln file given) |
| `kiln-<precision>` | kiln built at that precision (fp32, fp16, ...), the other flags as given |
| `kiln-unoptimized` | kiln FP32 with every pass off and no tactic timing: the model run node |
|  | by node as written, the "framework as is" baseline |
| `ort` | ONNX Runtime: its CUDA provider when the run is on CUDA and it has one, else CPU |
| `ort-cpu`, `ort-cuda` | ONNX Runtime with that provider |

From Python, `TorchPeer(module, mode)` adds a PyTorch module: eager, replayed from a
CUDA graph (`cuda-graph`), or `compile` (torch.compile).

A peer name registers itself with `@peer(...)`; a factory gets the run's PeerContext and
returns a runner (kiln.bench.runners) with its build time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kiln.bench.runners import KilnRunner, OrtRunner, PeerUnavailable, TorchRunner
from kiln.build import BuilderConfig, build_engine
from kiln.build.config import PRECISIONS
from kiln.engine.engine import Engine
from kiln.errors import KilnError


@dataclass
class PeerContext:
    """What every peer of one run shares."""

    model: str | None  # the ONNX model, when there is one
    engine: Engine | None  # the engine given as a .kiln file, if any
    config: BuilderConfig  # the command's build flags (profiles set for a batch sweep)
    device: torch.device
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    use_cuda_graph: bool | None = None

    def need_model(self, peer: str) -> str:
        if self.model is None:
            raise PeerUnavailable(f"peer {peer!r} needs the ONNX model; only an engine "
                                  "(.kiln) was given", hint="bench the .onnx model instead")
        return self.model


@dataclass
class Peer:
    name: str
    kind: str  # "kiln", "ort" or "torch"
    precision: str
    create: Callable[[PeerContext], Any]  # -> runner with .build_seconds


_FACTORIES: dict[str, Callable[[str], Peer]] = {}


def peer(*names: str):
    """Registers the decorated `factory(name) -> Peer` under each of `names`."""

    def decorate(factory: Callable[[str], Peer]) -> Callable[[str], Peer]:
        for name in names:
            _FACTORIES[name] = factory
        return factory

    return decorate


def known_peers() -> list[str]:
    return sorted(_FACTORIES)


def parse_peers(text: str) -> list[Peer]:
    """`ort,kiln-fp32,kiln-fp16` -> peers, in order; the first is the baseline."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise KilnError("--peers is empty", hint="e.g. --peers=ort,kiln-unoptimized,kiln")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KilnError(f"--peers lists {', '.join(duplicates)} more than once")
    unknown = [n for n in names if n not in _FACTORIES]
    if unknown:
        raise KilnError(f"unknown peer(s) {', '.join(map(repr, unknown))}",
                        hint=f"known peers: {', '.join(known_peers())} "
                             "(PyTorch modules are added from Python with TorchPeer)")
    return [_FACTORIES[n](n) for n in names]


# --------------------------------------------------------------------------- kiln
def _kiln_runner(ctx: PeerContext, name: str, config: BuilderConfig) -> KilnRunner:
    model = ctx.need_model(name)
    started = time.perf_counter()
    engine = build_engine(model, config)
    runner = KilnRunner(engine, name, use_cuda_graph=ctx.use_cuda_graph)
    runner.build_seconds = time.perf_counter() - started
    return runner


@peer("kiln")
def _kiln(name: str) -> Peer:
    def create(ctx: PeerContext) -> KilnRunner:
        if ctx.engine is not None:
            runner = KilnRunner(ctx.engine, name, use_cuda_graph=ctx.use_cuda_graph)
            runner.build_seconds = ctx.engine.plan["build"].get("seconds")
            return runner
        return _kiln_runner(ctx, name, ctx.config)

    return Peer(name, "kiln", "(flags)", create)


@peer("kiln-unoptimized")
def _kiln_unoptimized(name: str) -> Peer:
    def create(ctx: PeerContext) -> KilnRunner:
        config = dataclasses.replace(ctx.config, precision="fp32", optimize=False,
                                     optimization_level=0, layer_precisions={})
        return _kiln_runner(ctx, name, config)

    return Peer(name, "kiln", "fp32", create)


def _kiln_at(name: str) -> Peer:
    precision = name.removeprefix("kiln-")

    def create(ctx: PeerContext) -> KilnRunner:
        return _kiln_runner(ctx, name, dataclasses.replace(ctx.config, precision=precision))

    return Peer(name, "kiln", precision, create)


for _precision in PRECISIONS:
    peer(f"kiln-{_precision}")(_kiln_at)


# --------------------------------------------------------------------------- ORT
def _ort_provider(ctx: PeerContext) -> str:
    if ctx.device.type != "cuda":
        return "cpu"
    try:
        import onnxruntime as ort
    except ImportError:
        return "cpu"
    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


@peer("ort", "ort-cpu", "ort-cuda")
def _ort(name: str) -> Peer:
    def create(ctx: PeerContext) -> OrtRunner:
        provider = {"ort-cpu": "cpu", "ort-cuda": "cuda"}.get(name) or _ort_provider(ctx)
        return OrtRunner(ctx.need_model(name), name, provider=provider)

    return Peer(name, "ort", "fp32", create)


# --------------------------------------------------------------------------- PyTorch
def TorchPeer(module: torch.nn.Module, mode: str = "eager", *, name: str | None = None,
              dtype: torch.dtype | None = None, **compile_options: Any) -> Peer:
    """A PyTorch module as a peer. It is called with the model's inputs as positional
    arguments in the model's input order; its outputs (a tensor, tuple or dict) are
    matched to the model's outputs by position."""
    label = name or f"torch-{mode}" + (f"-{str(dtype).removeprefix('torch.')}" if dtype else "")
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")

    def create(ctx: PeerContext) -> TorchRunner:
        return TorchRunner(module, ctx.input_names, ctx.output_names, mode=mode, name=label,
                           device=ctx.device, dtype=dtype, compile_options=compile_options)

    return Peer(label, "torch", precision, create)
