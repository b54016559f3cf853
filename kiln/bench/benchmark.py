"""One benchmark run: peers x batch sizes, each timed as trtexec times, with memory,
utilization and accuracy against the first peer.

    bench = Benchmark("model.onnx", peers=["ort", "kiln-unoptimized", "kiln"],
                      options=InferenceOptions(duration_s=1), batches=[1, 8, 32])
    bench.add_peer(TorchPeer(module, "eager"))
    result = bench.run()
    write_report(result, "report/")

Every peer at a batch size gets the same inputs (seeded, or the files given), so the
accuracy columns compare like with like. A peer that cannot run here (no CUDA for CUDA
graphs, no ONNX Runtime) is listed as skipped; one that fails is listed with its error.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import kiln
from kiln.bench.compare import compare_outputs
from kiln.bench.exports import layer_info_json
from kiln.bench.inputs import (
    InputSpec,
    load_input_files,
    random_inputs,
    specs_from_engine,
    specs_from_graph,
)
from kiln.bench.options import InferenceOptions
from kiln.bench.peers import Peer, PeerContext, parse_peers
from kiln.bench.profile import LayerProfiler
from kiln.bench.resources import ResourceMonitor
from kiln.bench.runners import KilnRunner, PeerUnavailable
from kiln.bench.summary import PerformanceSummary, summarize
from kiln.bench.sweep import batch_profiles, check_dynamic_batch, check_engine_batches
from kiln.bench.trace import RunTrace, measure
from kiln.build import BuilderConfig
from kiln.build.config import resolve_device
from kiln.engine.engine import Engine
from kiln.errors import KilnError

Progress = Callable[[str, float | None], None]


@dataclass
class PeerRun:
    """One peer at one batch size."""

    peer: str
    kind: str
    precision: str
    batch: int | None  # None: the model's own input shapes
    status: str = "ok"  # ok, skipped, failed
    note: str = ""
    build_seconds: float | None = None
    trace: RunTrace | None = None
    summary: PerformanceSummary | None = None
    accuracy: dict[str, Any] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    profile: LayerProfiler | None = None
    cuda_graph: str = "off"
    device: str = "cpu"

    @property
    def latencies_ms(self) -> list[float]:
        return [t.latency for t in self.trace.traces] if self.trace else []

    @property
    def items_per_second(self) -> float | None:
        if self.summary is None:
            return None
        return self.summary.throughput_qps * (self.batch or 1)


@dataclass
class BenchmarkResult:
    model: str
    device: str
    options: InferenceOptions
    runs: list[PeerRun]
    batches: list[int | None]
    inputs: list[InputSpec]
    environment: dict[str, Any]
    command: str = ""

    @property
    def peers(self) -> list[str]:
        return list(dict.fromkeys(r.peer for r in self.runs))

    @property
    def baseline(self) -> str | None:
        return next((r.peer for r in self.runs if r.status == "ok"), None)

    def run_of(self, peer: str, batch: int | None) -> PeerRun | None:
        return next((r for r in self.runs if r.peer == peer and r.batch == batch), None)

    @property
    def failed(self) -> bool:
        return any(r.status == "failed" for r in self.runs)


class Benchmark:
    def __init__(self, model: str | Path, *, config: BuilderConfig | None = None,
                 options: InferenceOptions | None = None,
                 peers: list[str | Peer] | str | None = None,
                 batches: list[int] | None = None,
                 shapes: dict[str, list[int]] | None = None,
                 inputs: dict[str, np.ndarray] | None = None,
                 input_files: str | None = None, layer_info: bool = False,
                 progress: Progress | None = None) -> None:
        self.model_path = Path(model)
        if not self.model_path.is_file():
            raise KilnError(f"model file not found: {self.model_path}",
                            hint="give an .onnx model or a .kiln engine")
        self.config = config or BuilderConfig()
        self.options = options or InferenceOptions()
        self.peers = self._peers(peers)
        self.batches = batches
        self.shapes = dict(shapes or {})
        self.given_inputs = dict(inputs or {})
        self.input_files = input_files
        self.want_layer_info = layer_info
        self.layer_info: dict[str, Any] | None = None  # of the first kiln peer
        self.progress = progress or (lambda _msg, _fraction: None)
        self.engine: Engine | None = None
        self.graph = None
        self.context: PeerContext | None = None
        self.batch_list: list[int | None] = []
        self.specs: dict[int | None, list[InputSpec]] = {}
        self.feeds: dict[int | None, dict[str, np.ndarray]] = {}

    def _peers(self, peers: list[str | Peer] | str | None) -> list[Peer]:
        if peers is None:
            return parse_peers("kiln")
        if isinstance(peers, str):
            return parse_peers(peers)
        out: list[Peer] = []
        for p in peers:
            out.extend(parse_peers(p) if isinstance(p, str) else [p])
        return out

    def add_peer(self, peer: Peer) -> None:
        if any(p.name == peer.name for p in self.peers):
            raise KilnError(f"a peer named {peer.name!r} is already in this benchmark",
                            hint="give it another name=")
        self.peers.append(peer)

    # ------------------------------------------------------------------ setup
    def _load_model(self) -> None:
        if is_engine_file(self.model_path):
            self.engine = Engine.load(self.model_path)
        else:
            from kiln.onnx import read_onnx

            self.graph = read_onnx(str(self.model_path))

    def input_specs(self, batch: int | None) -> list[InputSpec]:
        if self.graph is not None:
            return specs_from_graph(self.graph, self.shapes, batch)
        assert self.engine is not None
        return specs_from_engine(self.engine, self.shapes, batch)

    def _declared(self) -> dict[str, list]:
        if self.graph is not None:
            return {v.name: list(v.shape or []) for v in self.graph.inputs if v.kind == "tensor"}
        assert self.engine is not None
        return {io.name: list(io.shape or []) for io in self.engine.inputs}

    def _io_names(self) -> tuple[list[str], list[str]]:
        if self.graph is not None:
            return ([v.name for v in self.graph.inputs], [v.name for v in self.graph.outputs])
        assert self.engine is not None
        return self.engine.input_names, self.engine.output_names

    def _shapes_from_given(self) -> None:
        """Given inputs fix their own shapes (and the named dims others share with them)."""
        names = {s.name for s in self.specs[self.batch_list[0]]}
        unknown = sorted(set(self.given_inputs) - names)
        if unknown:
            raise KilnError(f"inputs were given for {', '.join(unknown)}, which the model has "
                            f"no input called; its inputs are {', '.join(sorted(names))}")
        for name, value in self.given_inputs.items():
            self.shapes.setdefault(name, [int(d) for d in np.shape(value)])
        self.specs = {b: self.input_specs(b) for b in self.batch_list}

    def _inputs_for(self, specs: list[InputSpec]) -> dict[str, np.ndarray]:
        feeds = random_inputs(specs, self.options.seed)
        for name, value in self.given_inputs.items():
            if self.batches is not None and value.ndim and value.shape[0] != feeds[name].shape[0]:
                value = _fit_batch(value, feeds[name].shape[0])
            feeds[name] = value
        return feeds

    # ------------------------------------------------------------------ run
    def prepare(self) -> None:
        """Reads the model, works out every input and checks the flags, before any build."""
        if self.context is not None:
            return
        self._load_model()
        device = self.engine_device()
        self.batch_list = list(self.batches) if self.batches else [None]
        self.specs = {b: self.input_specs(b) for b in self.batch_list}
        if self.input_files:
            self.given_inputs.update(load_input_files(self.input_files,
                                                      self.specs[self.batch_list[0]]))
        if self.given_inputs:
            self._shapes_from_given()
        config = self.config
        if self.batches:
            check_dynamic_batch(self._declared(), self.batches)
            if self.engine is not None:
                check_engine_batches(self.engine, self.specs)  # type: ignore[arg-type]
            config = _with_profiles(config, batch_profiles(self.specs))  # type: ignore[arg-type]
        inputs, outputs = self._io_names()
        self.context = PeerContext(
            model=str(self.model_path) if self.graph is not None else None, engine=self.engine,
            config=config, device=device, input_names=inputs, output_names=outputs,
            use_cuda_graph=self.options.use_cuda_graph)
        self.feeds = {b: self._inputs_for(self.specs[b]) for b in self.batch_list}

    def run(self) -> BenchmarkResult:
        self.prepare()
        assert self.context is not None
        batches = self.batch_list
        references: dict[int | None, Any] = {}
        runs: list[PeerRun] = []
        total = len(self.peers) * len(batches)
        for index, peer in enumerate(self.peers):
            runs.extend(self._run_peer(peer, self.context, batches, self.feeds, references,
                                       index * len(batches), total))
        device = self.context.device
        return BenchmarkResult(str(self.model_path), device.type, self.options, runs, batches,
                               self.specs[batches[0]], environment(device))

    def engine_device(self) -> torch.device:
        if self.engine is not None:
            return torch.device("cuda" if self.engine.device["kind"] == "cuda" else "cpu")
        return resolve_device(self.config.device)

    def _run_peer(self, peer: Peer, context: PeerContext, batches: list[int | None],
                  feeds: dict, references: dict, done: int, total: int) -> list[PeerRun]:
        label = f"[{done + 1}/{total}] {peer.name}"
        self.progress(f"{label}: building", None)
        monitor = ResourceMonitor(context.device, torch_allocates=peer.kind != "ort").start()
        try:
            runner = peer.create(context)
        except PeerUnavailable as exc:
            monitor.stop()
            return [PeerRun(peer.name, peer.kind, peer.precision, b, "skipped", exc.message)
                    for b in batches]
        except Exception as exc:  # one peer failing must not lose the others' results
            monitor.stop()
            return [PeerRun(peer.name, peer.kind, peer.precision, b, "failed", _error(exc))
                    for b in batches]
        results = []
        try:
            for i, batch in enumerate(batches):
                step = f"[{done + i + 1}/{total}] {peer.name}" + \
                    (f" batch {batch}" if batch is not None else "")
                run = self._time_one(peer, runner, batch, feeds[batch], references, monitor, step)
                results.append(run)
        finally:
            memory = monitor.stop()
            runner.close()
            del runner
            gc.collect()
            if context.device.type == "cuda":
                torch.cuda.empty_cache()
        for run in results:
            run.memory = memory
        return results

    def _time_one(self, peer: Peer, runner: Any, batch: int | None, feeds: dict,
                  references: dict, monitor: ResourceMonitor, label: str) -> PeerRun:
        precision = runner.engine.precision if isinstance(runner, KilnRunner) else peer.precision
        run = PeerRun(peer.name, peer.kind, precision, batch,
                      build_seconds=getattr(runner, "build_seconds", None),
                      cuda_graph=getattr(runner, "cuda_graph", "off"),
                      device=runner.device.type)
        try:
            self.progress(f"{label}: warming up", None)
            runner.set_inputs(feeds)
            if peer.kind == "torch":  # compile time lands in the first call
                run.build_seconds = runner.build_seconds
            monitor.start_timing()
            run.trace, run.profile = self._measure(runner, peer, label)
            run.summary = summarize(run.trace, self.options.percentiles, batch or 1,
                                    cuda_graph_hint=run.cuda_graph != "on" and
                                    run.device == "cuda")
            outputs = runner.outputs()
            if self.want_layer_info and isinstance(runner, KilnRunner) and not self.layer_info:
                self.layer_info = layer_info_json(runner)
        except Exception as exc:
            run.status, run.note = "failed", _error(exc)
            return run
        if batch not in references:
            references[batch] = (peer.name, outputs)
        run.accuracy = accuracy_against(outputs, *references[batch])
        return run

    def _measure(self, runner: Any, peer: Peer, label: str
                 ) -> tuple[RunTrace, LayerProfiler | None]:
        def report(fraction: float) -> None:
            self.progress(f"{label}: timing", fraction)

        profiling = self.options.profile and peer.kind == "kiln"
        if not profiling:
            return measure(runner, self.options, on_progress=report), None
        profiler = LayerProfiler(runner.device)
        if not self.options.separate_profile_run:
            return measure(runner, self.options, profiler=profiler, on_progress=report), profiler
        trace = measure(runner, self.options, on_progress=report)
        self.progress(f"{label}: profiling layers", None)
        measure(runner, self.options, profiler=profiler, warmup=False)
        return trace, profiler


def is_engine_file(path: Path) -> bool:
    """A .kiln file, or any file whose safetensors header holds a kiln plan."""
    if path.suffix == ".kiln":
        return True
    try:
        with open(path, "rb") as f:
            return b"kiln.plan" in f.read(4096)
    except OSError:
        return False


def _with_profiles(config: BuilderConfig, profiles: list[dict]) -> BuilderConfig:
    return dataclasses.replace(config, profiles=profiles)


def _fit_batch(value: np.ndarray, batch: int) -> np.ndarray:
    """Given inputs, repeated or cut to `batch` rows for a sweep."""
    reps = -(-batch // value.shape[0])
    return np.concatenate([value] * reps, axis=0)[:batch]


def _error(exc: BaseException) -> str:
    if isinstance(exc, KilnError):
        return exc.message
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {str(exc)[:300]}{where}"


def accuracy_against(outputs: dict[str, Any], reference: str,
                     expected: dict[str, Any]) -> dict[str, Any]:
    """Summary of how `outputs` differ from the reference peer's, over all outputs."""
    compared = compare_outputs(outputs, expected)
    if not compared:
        return {"reference": reference, "outputs": 0}
    shapes_ok = [c for c in compared.values() if c.shape_mismatch is None]
    cosines = [c.metrics["cosine"] for c in shapes_ok if "cosine" in c.metrics]
    psnrs = [c.metrics["psnr_db"] for c in shapes_ok if "psnr_db" in c.metrics]
    top1 = [c.metrics["topk"]["top1"] for c in shapes_ok if "topk" in c.metrics]
    return {
        "reference": reference,
        "outputs": len(compared),
        "shape_mismatches": [c.name for c in compared.values() if c.shape_mismatch],
        "max_abs_diff": max((c.absdiff["max"] for c in shapes_ok), default=None),
        "max_rel_diff": max((c.reldiff["max"] for c in shapes_ok), default=None),
        "cosine_min": min(cosines) if cosines else None,
        "psnr_min_db": min(psnrs) if psnrs else None,
        "top1_agreement": min(top1) if top1 else None,
    }


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    env: dict[str, Any] = {
        "kiln": kiln.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        env.update({"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                    "sms": props.multi_processor_count,
                    "device_memory_bytes": props.total_memory})
    else:
        env["device_name"] = f"CPU ({env['processor']}, {torch.get_num_threads()} threads)"
    return env
