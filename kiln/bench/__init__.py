"""Benchmarking: trtexec-style timing, peers, accuracy comparison, reports.

    from kiln.bench import Benchmark, InferenceOptions, TorchPeer, write_report

    bench = Benchmark("model.onnx", peers="ort,kiln-unoptimized,kiln",
                      options=InferenceOptions(duration_s=1), batches=[1, 8])
    bench.add_peer(TorchPeer(module, "eager"))
    write_report(bench.run(), "report/")
"""

from kiln.bench.benchmark import Benchmark, BenchmarkResult, PeerRun
from kiln.bench.compare import Tolerances, compare_output, compare_outputs
from kiln.bench.options import InferenceOptions
from kiln.bench.peers import TorchPeer, parse_peers
from kiln.bench.report import write_report

__all__ = [
    "Benchmark", "BenchmarkResult", "InferenceOptions", "PeerRun", "Tolerances", "TorchPeer",
    "compare_output", "compare_outputs", "parse_peers", "write_report",
]
