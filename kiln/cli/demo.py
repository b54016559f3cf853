"""Build engines for the built-in model (a CNN trained on real handwritten digits), run
them on its test images, check them against ONNX Runtime and the labels, and time both.

  kiln demo [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.table import Table

from kiln.bench.timing import median, time_calls
from kiln.build import BuilderConfig, build_engine
from kiln.build.config import resolve_device
from kiln.cli.main import command
from kiln.demo import model_path, samples
from kiln.runtime import ExecutionContext


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda (default: auto)")
    p.add_argument("--seconds", type=float, default=0.5, help="timing per case (default 0.5)")


@command("demo", add_arguments)
def run(args: argparse.Namespace) -> int:
    out = Console()
    device = resolve_device(args.device)
    images, labels = samples()
    batch = images.shape[0]
    precisions = ["fp32", "fp16"] if device.type == "cuda" else ["fp32"]
    out.print(f"demo model: {model_path().name} (digits CNN), {batch} real test images, "
              f"device {device.type}")
    reference = _onnxruntime(images)
    table = Table(header_style="bold")
    for col in ("runtime", "build s", "accuracy", "max |diff| vs ORT", "top-1 agree",
                f"batch {batch} ms", "batch 1 ms"):
        table.add_column(col, justify="right")
    if reference is not None:
        run_ort, ort_out = reference
        table.add_row("onnxruntime (CPU)", "-", _accuracy(ort_out, labels), "0", "100.0%",
                      f"{median(time_calls(lambda: run_ort(images), min_s=args.seconds)):.3f}",
                      f"{median(time_calls(lambda: run_ort(images[:1]), min_s=args.seconds)):.3f}")
    for precision in precisions:
        # tuned for the batch the demo times (as trtexec's --optShapes), batch 1 allowed
        shape = list(images.shape[1:])
        profile = {"min": {"image": [1, *shape]}, "opt": {"image": [batch, *shape]},
                   "max": {"image": [batch, *shape]}}
        config = BuilderConfig(precision=precision, device=device.type, profiles=[profile])
        engine = build_engine(model_path(), config)
        run_kiln = ExecutionContext(engine).run
        outputs = run_kiln({"image": images})["probabilities"]
        diff, agree = "n/a", "n/a"
        if reference is not None:
            diff = f"{np.abs(outputs - reference[1]).max():.2e}"
            agree = f"{100 * np.mean(outputs.argmax(1) == reference[1].argmax(1)):.1f}%"
        t_batch = median(time_calls(lambda f=run_kiln: f({"image": images}), min_s=args.seconds))
        t_one = median(time_calls(lambda f=run_kiln: f({"image": images[:1]}),
                                  min_s=args.seconds))
        table.add_row(f"kiln {precision} ({device.type})",
                      f"{engine.plan['build']['seconds']:.2f}", _accuracy(outputs, labels),
                      diff, agree, f"{t_batch:.3f}", f"{t_one:.3f}")
    out.print(table)
    if reference is None:
        out.print("onnxruntime is not installed: no reference comparison "
                  "(pip install onnxruntime)")
    return 0


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> str:
    return f"{100 * np.mean(probabilities.argmax(1) == labels):.1f}%"


def _onnxruntime(images: np.ndarray):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(model_path()), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {"image": x})[0]

    return run, run(images)
