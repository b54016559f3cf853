"""Builds every shared real model at FP32 and FP16 on a device and prints its error against
the reference outputs (per-element atol 1e-4 / rtol 1e-3 count for FP32). INT8/FP8
engines (--precisions fp32,int8) are calibrated on the model's own samples and also
report how often the top class (last axis) agrees with the reference.

    PYTHONPATH=. python tools/real_models_check.py [--models DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

from kiln.build import BuilderConfig, build_engine
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="../shared/models")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default="fp32,fp16")
    args = parser.parse_args()
    for name in sorted(os.listdir(args.models)):
        path = os.path.join(args.models, name, "model.onnx")
        if not os.path.exists(path):
            continue
        samples = sorted(glob.glob(os.path.join(args.models, name, "samples", "[0-9]*.npz")))
        feeds_of = [_feeds(np.load(sample)) for sample in samples]
        for precision in args.precisions.split(","):
            started = time.perf_counter()
            try:
                calibrator = Calibrator(feeds_of) if precision in ("int8", "fp8") else None
                engine = build_engine(path, BuilderConfig(precision=precision,
                                                          device=args.device,
                                                          calibrator=calibrator))
                context = ExecutionContext(engine)
                worst, bad, agree, rows = 0.0, 0, 0, 0
                for sample in samples:
                    data = np.load(sample)
                    feeds = {k[6:]: data[k] for k in data.files if k.startswith("input.")}
                    outputs = context.run(feeds)
                    for key in data.files:
                        if key.startswith("output."):
                            got = np.asarray(outputs[key[7:]], dtype=np.float64)
                            want = data[key]
                            err = np.abs(got - want)
                            worst = max(worst, float(err.max()) if err.size else 0.0)
                            bad += int(((err > 1e-4) & (err > 1e-3 * np.abs(want))).sum())
                            if want.ndim and want.shape[-1] > 1:
                                top = got.reshape(-1, want.shape[-1]).argmax(-1)
                                agree += int((top == want.reshape(-1, want.shape[-1])
                                              .argmax(-1)).sum())
                                rows += top.size
                status = f"maxabs {worst:.2e} outside-fp32-bar {bad}"
                if rows:
                    status += f" top1-agree {agree / rows:.4f}"
            except Exception as exc:  # report and go on with the next model
                status = f"FAILED {type(exc).__name__}: {str(exc)[:200]}"
            print(f"{name:18s} {precision} {time.perf_counter() - started:6.1f}s {status}",
                  flush=True)


def _feeds(data) -> dict:
    return {k[6:]: data[k] for k in data.files if k.startswith("input.")}


if __name__ == "__main__":
    main()
