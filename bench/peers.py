"""kiln against what a PyTorch user runs today, on the same GPU, in one process.

For each model (exported to ONNX from its PyTorch definition with random weights: the
GPU machine has torchvision and transformers but no network) and batch size, it builds
kiln FP32 and FP16 (and with --precisions INT8/FP8, calibrated on other random batches)
engines and times them beside PyTorch eager FP16, eager FP16 replayed
as a CUDA graph, and torch.compile (default mode). Latency is the median of CUDA-event
timed runs after warm-up, inputs already on the device, outputs left there. It prints a
table of milliseconds and kiln/peer ratios and writes everything to JSON.

    PYTHONPATH=. python bench/peers.py --models resnet50,bert --batches 1,64 --out results/
    PYTHONPATH=. python bench/peers.py --smoke          # tiny models, CPU-friendly check
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiln.build import BuilderConfig, build_engine
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from kiln.runtime.profile import profile_layers

PROFILE = False
TRACE = False  # --trace: each engine's kernels as they ran in its CUDA graph, with the gaps
PDL_AB = False  # --pdl-ab: each engine also timed with programmatic dependent launch off
ROUNDS = 1  # --rounds: kiln engines timed again in alternating rounds

THROUGHPUT_BATCH = {"resnet50": 64, "bert": 32, "vit": 64, "tiny_cnn": 8, "tiny_bert": 8}
CALIBRATION_BATCHES = (16, 15, 14, 13)  # INT8/FP8 calibration: other inputs than the timed


@dataclass
class Case:
    model: str
    batch: int
    results: dict[str, float] = field(default_factory=dict)  # peer -> median ms
    memory_mb: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # --profile: every layer as [name, op, tactic, ms], per engine (in the --out JSON)
    profiles: dict[str, list] = field(default_factory=dict)
    # --profile: the tuner's ms per candidate tactic, per layer, per engine (in the JSON)
    tuning: dict[str, dict] = field(default_factory=dict)


# ----------------------------------------------------------------------------- models
def make_model(name: str) -> tuple[torch.nn.Module, callable, list[str], dict]:
    """(module, make_inputs(batch) -> tuple of tensors, input names, dynamic axes)."""
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None)
        _randomize_batchnorm(model)
        return model, lambda b: (torch.randn(b, 3, 224, 224),), ["images"], {
            "images": {0: "batch"}}
    if name == "vit":
        import torchvision

        model = torchvision.models.vit_b_16(weights=None)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialized there
        return model, lambda b: (torch.randn(b, 3, 224, 224),), ["images"], {
            "images": {0: "batch"}}
    if name == "bert":
        from transformers import BertConfig, BertModel

        model = _Encoder(BertModel(BertConfig(), add_pooling_layer=False))
        return model, _bert_inputs(30522, 128), ["input_ids", "attention_mask"], {
            "input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    if name == "tiny_cnn":
        return _tiny_cnn(), lambda b: (torch.randn(b, 3, 32, 32),), ["images"], {
            "images": {0: "batch"}}
    if name == "tiny_bert":
        return _TinyBert(), _bert_inputs(100, 16), ["input_ids", "attention_mask"], {
            "input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    raise SystemExit(f"unknown model {name!r}")


class _Encoder(torch.nn.Module):
    """A Hugging Face encoder called with keywords, returning its last hidden state."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _bert_inputs(vocab: int, seq: int):
    def make(batch: int):
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[:, seq - seq // 8:] = 0  # some padding, as real batches have
        return ids, mask

    return make


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def _tiny_cnn() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class _TinyBert(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.emb = nn.Embedding(100, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)

    def forward(self, ids, mask):
        additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
        x = self.emb(ids)
        q = k = v = x
        b, s, d = x.shape
        heads = lambda t: t.view(b, s, 4, d // 4).transpose(1, 2)  # noqa: E731
        att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 4.0 + additive, -1)
        ctx = (att @ heads(v)).transpose(1, 2).reshape(b, s, d)
        return self.layer.norm1(x + self.layer.linear2(torch.relu(self.layer.linear1(ctx))))


def export(model: torch.nn.Module, args: tuple, names: list[str], dynamic: dict) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, buffer, dynamo=False, opset_version=17,
                          input_names=names, dynamic_axes=dynamic, do_constant_folding=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- timing
def cuda_time(fn, warmup: int = 20, runs: int = 100) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_time(fn, warmup: int = 3, runs: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(fn, device: str, base: int = 0) -> tuple[float, float]:
    """(median ms, MiB of device memory the peer needs in steady state: the peak allocated
    during the timed runs minus `base`, what was allocated before the peer's weights went
    to the device). Warm-up (graph capture, cuDNN autotuning) is left out of the peak."""
    if device == "cuda":
        for _ in range(3):  # first runs capture graphs and autotune: not steady state
            fn()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ms = cuda_time(fn)
        return ms, (torch.cuda.max_memory_allocated() - base) / 2**20
    return host_time(fn), float("nan")


def _cudnn_workspace_mb() -> float:
    """What the caching allocator holds in blocks of cuDNN's workspace size class is not
    reported by torch; report the largest single segment instead, a workspace's hint."""
    segments = torch.cuda.memory_snapshot()
    return max((s["total_size"] for s in segments), default=0) / 2**20


def allocated(device: str) -> int:
    if device != "cuda":
        return 0
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def fresh_base(device: str, keep_workspaces: bool = False) -> int:
    """What is allocated before a peer starts, after dropping the cuBLAS workspaces earlier
    peers left (one per stream used, 32 MiB and up on Hopper), so that each peer pays for
    the workspaces it needs itself. Only between peers none of whose graphs replays again:
    keep_workspaces where one will (--rounds: a graph replaying on a freed workspace
    writes into memory another tensor holds, or faults)."""
    if device == "cuda":
        torch.cuda.synchronize()
        gc.collect()
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None and not keep_workspaces:
            clear()
    return allocated(device)


def allocated_by_pool() -> dict[str, float]:
    """MiB in use per stream of the general pool and in CUDA-graph private pools: shows
    where a peer's steady-state memory sits (weights, graph activations, workspaces)."""
    found: dict[str, float] = {}
    for segment in torch.cuda.memory_snapshot():
        pool = tuple(segment.get("segment_pool_id", (0, 0)))
        key = "graph_pools" if pool != (0, 0) else f"stream_{segment['stream']}"
        found[key] = found.get(key, 0.0) + segment["allocated_size"] / 2**20
    return {k: round(v, 1) for k, v in found.items() if v}


# ----------------------------------------------------------------------------- peers
def torch_peers(model: torch.nn.Module, inputs: tuple, device: str, wanted: set[str],
                case: Case) -> dict[str, Any]:
    """Eager FP16, eager FP16 + CUDA graph, torch.compile FP16; returns eager outputs."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    base = fresh_base(device)
    module = model.to(device=device, dtype=dtype).eval()
    args = tuple(t.to(device) if not t.is_floating_point() else t.to(device, dtype)
                 for t in inputs)
    outputs = {}
    with torch.inference_mode():
        if "eager" in wanted:
            ms, mb = measure(lambda: module(*args), device, base)
            case.results["eager_fp16"], case.memory_mb["eager_fp16"] = ms, mb
            outputs["eager_fp16"] = _first_tensor(module(*args))
        if "eager_cl" in wanted and device == "cuda" and args[0].dim() == 4:
            cl = module.to(memory_format=torch.channels_last)
            cl_args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
            with torch.backends.cudnn.flags(enabled=True, benchmark=True):
                graph_fn = _cuda_graphed(cl, cl_args)
                ms, mb = measure(graph_fn, device, base)
            case.results["eager_fp16_nhwc_cudagraph"] = ms
            module = module.to(memory_format=torch.contiguous_format)
        if "cudagraph" in wanted and device == "cuda":
            base = fresh_base(device) - _weight_bytes(module)
            graph_fn = _cuda_graphed(module, args)
            ms, mb = measure(graph_fn, device, base)
            case.results["eager_fp16_cudagraph"], case.memory_mb["eager_fp16_cudagraph"] = ms, mb
        if "compile" in wanted:
            base = fresh_base(device) - _weight_bytes(module)
            t0 = time.perf_counter()
            compiled = torch.compile(module)
            compiled(*args)
            case.build_s["torch_compile"] = time.perf_counter() - t0
            ms, mb = measure(lambda: compiled(*args), device, base)
            case.results["torch_compile_fp16"], case.memory_mb["torch_compile_fp16"] = ms, mb
            del compiled
            torch._dynamo.reset()
    module.to("cpu", torch.float32)
    return outputs


def _weight_bytes(module: torch.nn.Module) -> int:
    """A peer's weights count in its memory even when an earlier peer moved them."""
    return sum(t.numel() * t.element_size() for t in
               [*module.parameters(), *module.buffers()] if t.is_cuda)


def _cuda_graphed(module, args):
    static = [a.clone() for a in args]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(*static)
    return graph.replay


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, tuple | list):
        return _first_tensor(out[0])
    raise TypeError(type(out))


def kiln_peers(onnx_bytes: bytes, inputs: tuple, names: list[str], device: str,
               precisions: list[str], case: Case, cache: Path | None,
               calibration: list[dict] | None = None) -> dict[str, Any]:
    feeds = {n: t.to(device) for n, t in zip(names, inputs)}
    shapes = {n: list(t.shape) for n, t in feeds.items()}
    outputs, kept = {}, {}
    for choice in precisions:
        print(f"  building kiln_{choice} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        # "int8-obey": every calibrated layer quantized (--precisionConstraints=obey);
        # "int8@5": built at --builderOptimizationLevel 5 (else the builder's default)
        spec, _, level = choice.partition("@")
        precision, _, constraints = spec.partition("-")
        # INT8/FP8: calibrated (entropy) on a few other batches; other layers in FP16
        calibrator = Calibrator(calibration) if precision in ("int8", "fp8") else None
        config = BuilderConfig(precision=precision, device=device,
                               profiles=[{"opt": shapes}], calibrator=calibrator,
                               timing_cache=str(cache) if cache else None,
                               precision_constraints=constraints or "auto",
                               **({"optimization_level": int(level)} if level else {}))
        engine = build_engine(onnx_bytes, config)
        label = f"kiln_{choice}"
        case.build_s[label] = time.perf_counter() - t0
        base = fresh_base(device, keep_workspaces=bool(kept))
        context = ExecutionContext(engine)
        case.memory_mb[f"{label}_on_device_at_load"] = (allocated(device) - base) / 2**20
        ms, mb = measure(lambda c=context: c.run(feeds), device, base)
        if device == "cuda":
            case.memory_mb[f"{label}_held_after_runs"] = (allocated(device) - base) / 2**20
            case.memory_mb[f"{label}_cudnn_workspace"] = _cudnn_workspace_mb()
            case.notes.append(f"{label} device memory in use by pool (MiB, base included): "
                              f"{allocated_by_pool()}")
        case.results[label] = ms
        case.memory_mb[label] = mb
        if PDL_AB and device == "cuda":
            case.notes.append(_pdl_ab(engine, feeds, label))
        # as it comes, so a run cut off by its time limit still leaves the engines it timed
        print(f"  {case.model} b{case.batch} {label}: {ms:.3f} ms, build "
              f"{case.build_s[label]:.1f} s", file=sys.stderr, flush=True)
        case.memory_mb[f"{label}_weights"] = engine.weight_bytes() / 2**20
        planned = engine.memory.get("activations_planned_bytes")
        if planned is not None:
            case.memory_mb[f"{label}_activations_planned"] = planned / 2**20
        outputs[label] = next(iter(context.run(feeds).values()))
        _note_precision_choice(label, engine, case)
        if PROFILE:
            _print_profile(label, case, profile_layers(context, feeds, replayed=True))
            _print_tuning(label, engine, case)
        if TRACE and device == "cuda" and ROUNDS == 1:
            _trace(label, context, feeds, case)
        if context.graphs is not None and context.graphs.failures:
            case.notes.append(f"{label}: CUDA graph capture failed: "
                              f"{next(iter(context.graphs.failures.values()))[:200]}")
        if ROUNDS > 1 and device == "cuda":
            kept[label] = context
        del context, engine
        gc.collect()
    if kept:
        _alternate(kept, feeds, case)
        if TRACE:  # after the rounds, so that the profiler cannot touch them
            for label, context in kept.items():
                _trace(label, context, feeds, case)
    return outputs


def _trace(label: str, context, feeds: dict, case: Case) -> None:
    """The engine's run against a bare replay of its graph, and its kernels as CUDA's
    profiler saw them (kernel_profile)."""
    from kernel_profile import overheads, timeline

    try:
        overheads(context, feeds)
        lines = timeline(lambda c=context: c.run(feeds))
    except Exception as error:  # a profiler that cannot trace here: say so, go on
        lines = [f"no trace ({type(error).__name__}: {error})"]
    print(f"  trace {case.model} b{case.batch} {label}: " + "\n".join(lines), flush=True)


def _alternate(contexts: dict, feeds: dict, case: Case) -> None:
    """The engines timed again in ROUNDS alternating rounds of 100 runs each, so that a
    clock or neighbour drifting during the run touches every engine alike; each engine's
    figure becomes the median of its rounds."""
    times: dict[str, list[float]] = {label: [] for label in contexts}
    for _ in range(ROUNDS):
        for label, context in contexts.items():
            times[label].append(cuda_time(lambda c=context: c.run(feeds), warmup=5))
    for label, rounds in times.items():
        case.results[label] = statistics.median(rounds)
        case.notes.append(f"{label} in {ROUNDS} alternating rounds, ms: "
                          + " ".join(f"{t:.3f}" for t in rounds))


def _pdl_ab(engine, feeds: dict, label: str, rounds: int = 5) -> str:
    """The engine captured twice, with kiln's Triton kernels launched without and with
    programmatic dependent launch (KILN_PDL, read when the CUDA graph is captured), timed
    in alternating rounds: the gap it closes between kernels, in one process."""
    contexts = {}
    for flag in ("0", "1"):
        os.environ["KILN_PDL"] = flag
        contexts[flag] = ExecutionContext(engine)
        for _ in range(3):  # the capture, under this setting
            contexts[flag].run(feeds)
    os.environ.pop("KILN_PDL")
    times: dict[str, list[float]] = {"0": [], "1": []}
    for _ in range(rounds):
        for flag, context in contexts.items():
            times[flag].append(cuda_time(lambda c=context: c.run(feeds), warmup=5))
    off, on = (statistics.median(times[f]) for f in ("0", "1"))
    from kernel_profile import startup_ms

    startup = {f: startup_ms(next(g for g in c.graphs.graphs.values() if g).graph)
               for f, c in contexts.items()}
    return (f"{label} programmatic dependent launch: off {off:.3f} ms, on {on:.3f} ms "
            f"({off / on:.3f}x; median of {rounds} alternating rounds of 100 runs); a "
            f"replay's start-up: off {startup['0']:.3f} ms, on {startup['1']:.3f} ms")


def _note_precision_choice(label: str, engine, case: Case) -> None:
    """How many quantized layers beat their fallback-precision twins, and the sums."""
    choice = engine.plan["build"].get("precision_choice")
    if not choice:
        return
    times = choice["layer_ms"]
    if not times:
        return
    low, high = next(iter(times.values()))  # {quantized precision: ms, fallback: ms}
    kept = next(v for k, v in choice.items() if k.startswith("kept_in_"))
    total_low = sum(t[low] for t in times.values())
    total_high = sum(t[high] for t in times.values())
    faster = sum(t[low] < t[high] for t in times.values())
    case.notes.append(
        f"{label}: {faster} of {len(times)} layers faster in {low} alone, "
        f"{len(times) - len([k for k in kept if k in times])} kept there; quantizable layers "
        f"sum {total_low:.3f} ms in {low} vs {total_high:.3f} ms in {high} (per layer, each "
        f"replayed alone); whole engines ms {choice.get('engine_ms')}")


def _print_profile(label: str, case: Case, layers: list) -> None:
    """Time per op kind and tactic, then the slowest layers (each replayed alone)."""
    total = sum(t.ms for t in layers)
    by_kind: dict[tuple[str, str], list[float]] = {}
    for t in layers:
        by_kind.setdefault((t.op, t.tactic), []).append(t.ms)
    print(f"  profile {case.model} b{case.batch} {label}: {total:.3f} ms in {len(layers)} layers")
    case.profiles[label] = [[t.name, t.op, t.tactic, round(t.ms, 5)] for t in layers]
    for (op, tactic), times in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))[:12]:
        print(f"    {op:18s} {tactic:26s} x{len(times):3d} {sum(times):8.3f} ms "
              f"{100 * sum(times) / total:5.1f}%")
    for t in sorted(layers, key=lambda t: -t.ms)[:6]:
        print(f"    slowest {t.name[:40]:40s} {t.op:12s} {t.tactic:26s} {t.ms:.3f} ms")


def _print_tuning(label: str, engine, case: Case) -> None:
    """Per op kind with several candidates, the tuner's mean ms per tactic over the layers
    that timed it (the chosen tactic's layers on its own line in the profile above), and
    the tactics the tuner could not run."""
    by_op: dict[str, dict[str, list[float]]] = {}
    for layer in engine.layers():
        timings = layer.get("timings") or {}
        case.tuning.setdefault(label, {})[layer["name"]] = timings
        for tactic, ms in timings.items():
            by_op.setdefault(layer["op"], {}).setdefault(tactic, []).append(ms)
    for op, tactics in sorted(by_op.items()):
        if len(tactics) > 1:
            means = sorted((sum(t) / len(t), name) for name, t in tactics.items())
            print(f"    tuner {op}: " + ", ".join(f"{name} {ms:.3f}" for ms, name in means[:8]))
    skipped = engine.plan["build"].get("tuning", {}).get("skipped")
    if skipped:
        print(f"    tuner skipped: {str(skipped)[:600]}")


def reference_fp32(model: torch.nn.Module, inputs: tuple, device: str) -> torch.Tensor:
    module = model.to(device=device, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = _first_tensor(module(*(t.to(device) for t in inputs))).float()
    module.to("cpu")
    return out


def accuracy(reference: torch.Tensor, outputs: dict[str, Any], case: Case) -> None:
    # float64: a cosine over millions of float32 products can land above 1 (BERT b32: 1.00012)
    ref = reference.double().cpu()
    for label, out in outputs.items():
        got = out.double().cpu() if isinstance(out, torch.Tensor) else torch.from_numpy(
            np.asarray(out)).double()
        diff = (got - ref).abs()
        cos = torch.nn.functional.cosine_similarity(got.reshape(1, -1), ref.reshape(1, -1))
        entry = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                 "cosine": float(cos)}
        if ref.dim() == 2:
            entry["top1_agree"] = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        case.accuracy[label] = entry


# ----------------------------------------------------------------------------- main
def run_case(name: str, batch: int, device: str, peers: set[str], precisions: list[str],
             cache: Path | None) -> Case:
    case = Case(name, batch)
    model, make_inputs, names, dynamic = make_model(name)
    inputs = make_inputs(batch)
    onnx_bytes = export(model, make_inputs(2), names, dynamic)
    reference = reference_fp32(model, inputs, device)
    outputs = {}
    if "kiln" in peers:
        calibration = [dict(zip(names, (t.numpy() for t in make_inputs(size))))
                       for size in CALIBRATION_BATCHES]
        outputs.update(kiln_peers(onnx_bytes, inputs, names, device, precisions, case, cache,
                                  calibration))
    outputs.update(torch_peers(model, inputs, device, peers, case))
    accuracy(reference, outputs, case)
    return case


def table(cases: list[Case]) -> str:
    lines = []
    for case in cases:
        lines.append(f"\n{case.model} batch {case.batch}")
        base = case.results.get("kiln_fp16") or case.results.get("kiln_fp32")
        for peer, ms in case.results.items():
            ratio = f"{ms / base:6.2f}x" if base else ""
            acc = case.accuracy.get(peer, {})
            acc_text = f"maxabs {acc['max_abs']:.2e} cos {acc['cosine']:.6f}" if acc else ""
            if "top1_agree" in acc:
                acc_text += f" top1 {acc['top1_agree']:.3f}"
            mem = case.memory_mb.get(peer, float("nan"))
            weights = case.memory_mb.get(f"{peer}_weights")
            weights_text = f"  weights {weights:7.1f} MiB" if weights is not None else ""
            lines.append(f"  {peer:24s} {ms:9.3f} ms  peer/kiln {ratio}  mem {mem:8.1f} MiB"
                         f"{weights_text}  {acc_text}")
        for key, seconds in case.build_s.items():
            lines.append(f"  build {key:18s} {seconds:7.1f} s")
        extra = {k: v for k, v in case.memory_mb.items() if k not in case.results}
        if extra:
            lines.append("  memory MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in extra.items()))
        lines.extend(f"  note: {n}" for n in case.notes)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,bert")
    parser.add_argument("--batches", default="1,throughput",
                        help="comma list; 'throughput' = 64 for ResNet/ViT, 32 for BERT")
    parser.add_argument("--peers", default="kiln,eager,cudagraph,compile")
    parser.add_argument("--precisions", default="fp32,fp16",
                        help="kiln engines to build: fp32, fp16, int8, fp8 (int8-obey, "
                        "fp8-obey: every calibrated layer quantized; int8@5: built at "
                        "optimization level 5)")
    parser.add_argument("--out", default=None, help="folder for results.json")
    parser.add_argument("--timing-cache", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny models (works on CPU)")
    parser.add_argument("--profile", action="store_true",
                        help="print per-layer profiles (every layer in the --out JSON)")
    parser.add_argument("--trace", action="store_true",
                        help="print each engine's kernels as they ran in its CUDA graph, "
                        "with the gaps between them")
    parser.add_argument("--pdl-ab", action="store_true",
                        help="also time each engine with programmatic dependent launch off")
    parser.add_argument("--rounds", type=int, default=1,
                        help="on the GPU, time kiln's engines again in this many alternating "
                        "rounds and report each one's median")
    args = parser.parse_args()
    global PROFILE, PDL_AB, ROUNDS, TRACE
    PROFILE, PDL_AB, ROUNDS, TRACE = args.profile, args.pdl_ab, args.rounds, args.trace
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = ["tiny_cnn", "tiny_bert"] if args.smoke else args.models.split(",")
    peers = set(args.peers.split(","))
    if device == "cpu":
        peers -= {"compile", "cudagraph"}
    cases = []
    for name in models:
        for b in args.batches.split(","):
            batch = THROUGHPUT_BATCH[name] if b == "throughput" else int(b)
            cases.append(run_case(name, batch, device, peers, args.precisions.split(","),
                                  Path(args.timing_cache) if args.timing_cache else None))
            print(table(cases[-1:]), flush=True)
    info = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "cases": [asdict(c) for c in cases]}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "peers.json").write_text(json.dumps(info, indent=1))
    print("\n=== summary ===" + table(cases))


if __name__ == "__main__":
    main()
