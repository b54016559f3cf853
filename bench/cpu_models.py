"""kiln against ONNX Runtime on the CPU, over the shared real models, at one thread count.

For every model in ../shared/models it takes the first sample's inputs, builds a kiln FP32
engine for the CPU (tuned at that shape), and times kiln and ONNX Runtime (CPU provider,
all graph optimizations) in one process with the same number of threads, back to back in
alternating blocks of a quarter second.
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


def paired_medians(first, second, seconds: float, block: float = 0.25) -> tuple[float, float]:
    """Median milliseconds of two callables, each timed back to back (warm caches, as a
    latency benchmark runs) in blocks of about `block` seconds that alternate between the
    two: on a shared machine the speed drifts over seconds (other tenants, memory
    reclaim), and one long span per peer would charge the drift to one of them. The first
    run of each block warms the caches up and is not counted."""
    times: tuple[list[float], list[float]] = ([], [])
    end = time.perf_counter() + 2 * seconds
    while time.perf_counter() < end or min(len(t) for t in times) < 10:
        for fn, out in zip((first, second), times):
            fn()
            stop = time.perf_counter() + block
            while True:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1000)
                if t0 > stop:
                    break
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="../shared/models")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="write cpu_models.json here")
    parser.add_argument("--only", default="", help="comma list of model names (default: all)")
    parser.add_argument("--ort-no-spin", action="store_true",
                        help="ORT's intra-op threads sleep instead of spinning between runs "
                             "(its default spins, which on a 2-vCPU machine slows it down)")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    if args.ort_no_spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rows = []
    for name in sorted(os.listdir(args.models)):
        path = os.path.join(args.models, name, "model.onnx")
        samples = sorted(glob.glob(os.path.join(args.models, name, "samples", "[0-9]*.npz")))
        if not os.path.exists(path) or not samples or (only and name not in only):
            continue
        data = np.load(samples[0])
        feeds = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        started = time.perf_counter()
        # the sample is also the build's probe input (`kiln build --loadInputs`): random
        # values would send a model like silero-vad (its sample rate an input) down a
        # branch that fails, leaving the build nothing to tune
        engine = build_engine(path, BuilderConfig(device="cpu", profiles=[{"opt": shapes}],
                                                  probe_inputs=feeds))
        build_s = time.perf_counter() - started
        context = ExecutionContext(engine)
        t_ort, t_kiln = paired_medians(lambda s=session, f=feeds: s.run(None, f),
                                       lambda c=context, f=feeds: c.run(f), args.seconds)
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
