"""kiln against ONNX Runtime on the CPU, over the shared real models, at one thread count.

For every model in ../shared/models it takes the first sample's inputs, builds a kiln FP32
engine for the CPU (tuned at that shape), and times kiln and ONNX Runtime (CPU provider,
all graph optimizations) alternately in one process with the same number of threads.
Prints per-model medians, the kiln/ORT ratio, and the median ratio over the models.

    PYTHONPATH=. python bench/cpu_models.py [--models ../shared/models] [--threads 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiln.build import BuilderConfig, build_engine
from kiln.runtime import ExecutionContext


def median_ms(fn, seconds: float) -> float:
    for _ in range(3):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="../shared/models")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="write cpu_models.json here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    rows = []
    for name in sorted(os.listdir(args.models)):
        path = os.path.join(args.models, name, "model.onnx")
        samples = sorted(glob.glob(os.path.join(args.models, name, "samples", "[0-9]*.npz")))
        if not os.path.exists(path) or not samples:
            continue
        data = np.load(samples[0])
        feeds = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        started = time.perf_counter()
        engine = build_engine(path, BuilderConfig(device="cpu", profiles=[{"opt": shapes}]))
        build_s = time.perf_counter() - started
        context = ExecutionContext(engine)
        t_ort = median_ms(lambda s=session, f=feeds: s.run(None, f), args.seconds)
        t_kiln = median_ms(lambda c=context, f=feeds: c.run(f), args.seconds)
        rows.append({"model": name, "ort_ms": t_ort, "kiln_ms": t_kiln,
                     "ratio": t_kiln / t_ort, "build_s": build_s,
                     "layers": len(engine.layers())})
        print(f"{name:18s} ort {t_ort:9.3f} ms  kiln {t_kiln:9.3f} ms  kiln/ort "
              f"{t_kiln / t_ort:5.2f}  ({len(engine.layers())} layers, build {build_s:.1f} s)",
              flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    print(f"median kiln/ORT latency ratio over {len(rows)} models at {args.threads} threads: "
          f"{ratio:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
            "torch": torch.__version__, "onnxruntime": ort.__version__, "rows": rows,
            "median_ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
