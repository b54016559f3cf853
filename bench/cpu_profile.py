"""Where a shared real model's time goes on the CPU: kiln's layers beside ONNX Runtime's nodes.

For each named model it builds the kiln CPU engine as `bench/cpu_models.py` does, times
every layer (`kiln.runtime.profile.profile_layers`, host clock) and ONNX Runtime's nodes
(`enable_profiling`, "Node" events), and prints both aggregated by operator, plus each
engine's whole-run median and the part of it no layer accounts for (the runtime's own
dispatch between layers).

    PYTHONPATH=. python bench/cpu_profile.py --only ppocr-cls-v2,attacut-c [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiln.bench.timing import median, time_calls
from kiln.build import BuilderConfig, build_engine
from kiln.runtime import ExecutionContext
from kiln.runtime.profile import profile_layers


def _ort_nodes(path: str, feeds: dict, threads: int, runs: int) -> dict[str, list[float]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]].append(event["dur"] / 1000 / runs)
    return by_op


def _table(title: str, by_op: dict[str, list[float]], top: int, runs: int = 1) -> None:
    rows = sorted(by_op.items(), key=lambda kv: -sum(kv[1]))[:top]
    print(f"  {title}: {sum(sum(v) for v in by_op.values()):.3f} ms in "
          f"{sum(len(v) for v in by_op.values()) // runs} layers")
    for op, times in rows:
        print(f"    {op:40s} {len(times) // runs:4d} x  {sum(times):8.3f} ms")


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="../shared/models")
    parser.add_argument("--only", required=True, help="comma list of model names")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--layers", type=int, default=0, help="also list the N slowest layers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only.split(","):
        path = os.path.join(args.models, name, "model.onnx")
        data = np.load(sorted(glob.glob(os.path.join(args.models, name, "samples",
                                                     "[0-9]*.npz")))[0])
        feeds = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        engine = build_engine(path, BuilderConfig(device="cpu", profiles=[{"opt": shapes}],
                                                  probe_inputs=feeds))
        context = ExecutionContext(engine)
        kiln_ms = median(time_calls(lambda c=context, f=feeds: c.run(f), min_s=1.0))
        layers = profile_layers(context, feeds, runs=args.runs)
        by_op: dict[str, list[float]] = collections.defaultdict(list)
        for layer in layers:
            by_op[f"{layer.op} [{layer.tactic}]"].append(layer.ms)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        ort_ms = median(time_calls(lambda s=session, f=feeds: s.run(None, f), min_s=1.0))
        in_layers = sum(layer.ms for layer in layers)
        print(f"{name}: kiln {kiln_ms:.3f} ms (layers {in_layers:.3f}, between layers "
              f"{kiln_ms - in_layers:.3f}), ORT {ort_ms:.3f} ms")
        _table("kiln", by_op, args.top)
        _table("ORT", _ort_nodes(path, feeds, args.threads, args.runs), args.top, args.runs)
        if args.layers:
            print(f"  slowest {args.layers} kiln layers:")
            for layer in sorted(layers, key=lambda t: -t.ms)[:args.layers]:
                print(f"    {layer.name[:40]:40s} {layer.op:14s} {layer.tactic:22s} "
                      f"{layer.ms:7.3f} ms  {layer.elements} out")


if __name__ == "__main__":
    main()
