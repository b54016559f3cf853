"""`kiln serve` under Triton's own load generator, perf_analyzer: throughput and p50/p99
latency over HTTP and gRPC at concurrency 1 to 16, with dynamic batching on and off.

    python bench/serve_perf.py                  # prints a markdown section for RESULTS.md
    python bench/serve_perf.py --output out.md --concurrency 1 4 16

It sets perf_analyzer up itself, in a work directory outside the repository (default
~/.cache/kiln/serve_perf, or --work):

- perf_analyzer is the binary bundled in the tritonclient==2.48.0 wheel (`pip download
  --no-deps`, then taken out of the wheel): newer wheels need glibc 2.38, Debian 12 has 2.36;
- it needs libb64 (`apt-get install -y libb64-0d`, run here when root and it is missing) and
  libcudart.so.12, which loads without a GPU: nvidia-cuda-runtime-cu12 is pip-installed into
  the work directory (--target, never into the running environment) and put on
  LD_LIBRARY_PATH.

The model is kiln's demo CNN (kiln/demo/digits_cnn.onnx, 8x8 images), served twice from one
repository: `batched` (dynamic_batching, max_queue_delay 0, up to 16) and `unbatched` (no
dynamic_batching), each one instance. The server runs with --cpu-threads (default 1): on a
small CPU, torch's intra-op threads only contend with the server's own threads for a model
this small. Every request must succeed: perf_analyzer stops at the first failure, and the
server's failure counters are checked after each run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # kiln from this checkout, for its version in the report
TRITONCLIENT = "tritonclient==2.48.0"
CUDART = "nvidia-cuda-runtime-cu12"
CONFIGS = {
    "batched": "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 0 }\n"
               "instance_group [{ count: 1 kind: KIND_CPU }]\n",
    "unbatched": "max_batch_size: 16\ninstance_group [{ count: 1 kind: KIND_CPU }]\n",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "kiln" / "serve_perf")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--protocols", nargs="+", default=["http", "grpc"])
    p.add_argument("--measurement-interval", type=int, default=4000, help="ms per window")
    p.add_argument("--cpu-threads", type=int, default=1, help="kiln serve --cpu-threads")
    p.add_argument("--repeat", type=int, default=1,
                   help="sweeps to run; each figure is the median over them (default 1)")
    p.add_argument("--output", type=Path, help="also write the markdown section here")
    args = p.parse_args()

    perf_analyzer, env = setup_perf_analyzer(args.work)
    repository = write_repository(args.work / "repository")
    ports = [_free_port() for _ in range(3)]
    server = subprocess.Popen(
        [sys.executable, "-m", "kiln", "serve", str(repository), "--http-port", str(ports[0]),
         "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
         "--cpu-threads", str(args.cpu_threads)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_serving(server)
        runs: dict[tuple, list] = {}
        for _ in range(args.repeat):
            for protocol in args.protocols:
                url = f"127.0.0.1:{ports[0] if protocol == 'http' else ports[1]}"
                for concurrency in args.concurrency:
                    for model in CONFIGS:  # back to back, so both see the same machine
                        result = run_perf_analyzer(perf_analyzer, env, args, protocol, url,
                                                   model, concurrency)
                        failures = _failures(ports[2], model)
                        if failures:
                            raise SystemExit(f"{failures} failed request(s) on {model}")
                        runs.setdefault((protocol, concurrency, model), []).append(result)
                        print(f"{protocol} c={concurrency} {model}: {result[0]:.0f} infer/s, "
                              f"p50 {result[1] / 1000:.2f} ms, p99 {result[2] / 1000:.2f} ms",
                              file=sys.stderr)
        rows = [(*key, *(statistics.median(r[i] for r in results) for i in range(3)))
                for key, results in runs.items()]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    section = markdown(rows, args)
    print(section)
    if args.output:
        args.output.write_text(section)
    return 0


# ------------------------------------------------------------------ perf_analyzer set-up
def setup_perf_analyzer(work: Path) -> tuple[Path, dict[str, str]]:
    work.mkdir(parents=True, exist_ok=True)
    binary = work / "perf_analyzer"
    if not binary.exists():
        wheels = work / "wheels"
        _pip("download", "--no-deps", "-d", str(wheels), TRITONCLIENT)
        wheel = next(wheels.glob("tritonclient-2.48.0-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/bin/perf_analyzer"))
            binary.write_bytes(archive.read(member))
        binary.chmod(0o755)
    cudart = work / "cudart"
    if not list(cudart.rglob("libcudart.so.12")):
        _pip("install", "--no-deps", "--target", str(cudart), CUDART)
    if "libb64.so.0d" not in subprocess.run(["ldconfig", "-p"], capture_output=True,
                                            text=True).stdout:
        if os.geteuid() != 0:
            raise SystemExit("perf_analyzer needs libb64: run `apt-get install -y libb64-0d`")
        subprocess.run(["apt-get", "install", "-y", "libb64-0d"], check=True,
                       stdout=subprocess.DEVNULL)
    library = next(cudart.rglob("libcudart.so.12")).parent
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(library),
                                                           env.get("LD_LIBRARY_PATH")]))
    return binary, env


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "-q"], check=True)


def write_repository(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    model = ROOT / "kiln" / "demo" / "digits_cnn.onnx"
    for name, config in CONFIGS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        shutil.copy(model, root / name / "1" / "model.onnx")
    return root


# ------------------------------------------------------------------ measuring
def run_perf_analyzer(binary: Path, env: dict, args, protocol: str, url: str, model: str,
                      concurrency: int) -> tuple[float, float, float]:
    """(throughput infer/s, p50 us, p99 us) at one concurrency."""
    out = args.work / f"{protocol}-{model}-{concurrency}.csv"
    command = [str(binary), "-m", model, "-u", url, "-i", protocol,
               "--concurrency-range", str(concurrency),
               "--measurement-interval", str(args.measurement_interval),
               # the machine is shared: accept windows within 50% of each other
               "--stability-percentage", "50", "--max-trials", "20", "-f", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({' '.join(command)}):\n{done.stdout}"
                         f"{done.stderr}")
    with open(out) as f:
        row = next(csv.DictReader(f))
    return (float(row["Inferences/Second"]), float(row["p50 latency"]),
            float(row["p99 latency"]))


def _failures(metrics_port: int, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    pattern = rf'nv_inference_request_failure\{{model="{model}",[^}}]*\}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(server: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line and server.poll() is not None:
            break
        seen.append(line)
        if "serving" in line:
            return
    raise SystemExit("kiln serve did not start:\n" + "".join(seen))


# ------------------------------------------------------------------ report
def markdown(rows: list[tuple], args) -> str:
    import aiohttp
    import google.protobuf
    import grpc
    import torch

    import kiln

    by = {(p, c, m): (t, p50, p99) for p, c, m, t, p50, p99 in rows}
    lines = [
        "## kiln serve under perf_analyzer",
        "",
        f"{datetime.date.today().isoformat()}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, no GPU; kiln {kiln.__version__}, torch {torch.__version__},"
        f" aiohttp {aiohttp.__version__}, grpcio {grpc.__version__}, protobuf "
        f"{google.protobuf.__version__}, Python {platform.python_version()}; perf_analyzer "
        f"from {TRITONCLIENT}. Model: the demo CNN (kiln/demo/digits_cnn.onnx), FP32, one "
        f"CPU instance, `kiln serve --cpu-threads {args.cpu_threads}`; perf_analyzer and the "
        f"server share the machine; each figure the median of {args.repeat} sweep(s). "
        "`python bench/serve_perf.py` reproduces it.",
        "",
        "| protocol | concurrency | batching off: infer/s | p50 ms | p99 ms "
        "| batching on: infer/s | p50 ms | p99 ms | on / off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for protocol in args.protocols:
        for c in args.concurrency:
            off, on = by[(protocol, c, "unbatched")], by[(protocol, c, "batched")]
            lines.append(
                f"| {protocol.upper() if protocol == 'http' else 'gRPC'} | {c} "
                f"| {off[0]:.0f} | {off[1] / 1000:.2f} | {off[2] / 1000:.2f} "
                f"| {on[0]:.0f} | {on[1] / 1000:.2f} | {on[2] / 1000:.2f} "
                f"| {on[0] / off[0]:.2f}x |")
    lines += ["", "Every request succeeded (perf_analyzer stops at the first failure; the "
              "server's nv_inference_request_failure counters stayed at 0).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
