"""Time an engine as trtexec does, beside its peers, and write the adoption report.

  kiln bench model.onnx|model.kiln [build flags] [--iterations=10 --warmUp=200 --duration=3
             --avgRuns=10 --percentile=90,95,99 --shapes=x:1x3x224x224 --noDataTransfers
             --useCudaGraph --dumpProfile --separateProfileRun --exportTimes=t.json
             --exportProfile=p.json --exportLayerInfo=l.json --loadInputs=x:x.npy]
  kiln bench model.onnx --peers=ort,kiln-unoptimized,kiln,kiln-fp16 --batch=1,8,32
             --report=report/

Prints trtexec's `=== Performance summary ===` (one engine) or a table of every peer,
with each one's ratio to the first. See kiln/bench/peers.py for the peer names.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from kiln.bench.benchmark import Benchmark, BenchmarkResult, PeerRun
from kiln.bench.exports import profile_json, times_json, write_json
from kiln.bench.logs import TrtexecLog
from kiln.bench.options import InferenceOptions, parse_percentiles
from kiln.bench.summary import EXPLANATIONS, fmt, prolog_lines, trace_detail_lines
from kiln.bench.sweep import parse_batches
from kiln.build.profiles import parse_shapes
from kiln.cli.common import add_build_arguments, config_from_args, console
from kiln.cli.main import command
from kiln.errors import KilnError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx model (built with the build flags) or a .kiln engine")
    g = p.add_argument_group("inference (trtexec's flags and defaults)")
    g.add_argument("--iterations", type=int, default=10,
                   help="run at least this many queries (default 10)")
    g.add_argument("--warmUp", type=float, default=200.0,
                   help="warm up for this many milliseconds first (default 200)")
    g.add_argument("--duration", type=float, default=3.0,
                   help="time for at least this many seconds; -1 until Ctrl-C (default 3)")
    g.add_argument("--avgRuns", type=int, default=10,
                   help="report averages over this many consecutive queries (default 10)")
    g.add_argument("--percentile", default=None,
                   help="percentiles to report, e.g. 90,95,99 (the default)")
    cuda_graph = g.add_mutually_exclusive_group()
    cuda_graph.add_argument("--useCudaGraph", dest="use_cuda_graph", action="store_true",
                            default=None, help="replay queries from CUDA graphs (kiln's "
                                               "default on CUDA; n/a on the CPU)")
    cuda_graph.add_argument("--noCudaGraph", dest="use_cuda_graph", action="store_false",
                            help="run every layer eagerly, no CUDA graph")
    g.add_argument("--noDataTransfers", action="store_true",
                   help="leave inputs and outputs on the device: no H2D/D2H per query")
    g.add_argument("--separateProfileRun", action="store_true",
                   help="profile layers in a second run, so the timed run carries no profiler")
    g.add_argument("--dumpProfile", action="store_true", help="print the per-layer profile")
    g.add_argument("--exportTimes", metavar="FILE", help="write every query's times (JSON)")
    g.add_argument("--exportProfile", metavar="FILE", help="write the per-layer profile (JSON)")
    g.add_argument("--exportLayerInfo", metavar="FILE",
                   help="write the engine's layers with shapes and types (JSON)")
    g.add_argument("--loadInputs", metavar="SPEC",
                   help="inputs: in.npz, or name:file pairs (.npy or raw binary)")
    g.add_argument("--seed", type=int, default=1, help="seed of the random inputs (default 1)")
    k = p.add_argument_group("peers, batch sweep and report")
    k.add_argument("--peers", help="engines to run side by side, the first is the baseline, "
                                   "e.g. ort,kiln-unoptimized,kiln,kiln-fp16")
    k.add_argument("--batch", help="batch sizes to sweep, e.g. 1,8,32,64 (dynamic batch axis)")
    k.add_argument("--report", metavar="DIR", help="write report.md, report.json and charts")
    k.add_argument("--verbose", action="store_true", help="each peer's full summary, and "
                                                          "the metric explanations")
    k.add_argument("--quiet", action="store_true", help="no progress display")
    add_build_arguments(p)


@command("bench", add_arguments)
def run(args: argparse.Namespace) -> int:
    options = InferenceOptions(
        iterations=args.iterations, warmup_ms=args.warmUp, duration_s=args.duration,
        avg_runs=args.avgRuns, percentiles=parse_percentiles(args.percentile),
        use_cuda_graph=args.use_cuda_graph, no_data_transfers=args.noDataTransfers,
        separate_profile_run=args.separateProfileRun,
        profile=bool(args.dumpProfile or args.exportProfile), seed=args.seed)
    shapes = parse_shapes(args.shapes, "--shapes") or parse_shapes(args.optShapes, "--optShapes")
    progress = _Progress(quiet=args.quiet)
    bench = Benchmark(
        args.model, config=config_from_args(args), options=options,
        peers=args.peers or "kiln", batches=parse_batches(args.batch) if args.batch else None,
        shapes=shapes, input_files=args.loadInputs, layer_info=bool(args.exportLayerInfo),
        progress=progress)
    log = TrtexecLog(verbose=args.verbose)
    cmd = _command_line(args)
    log.frame("RUNNING", cmd)
    bench.prepare()
    _print_options(log, args, bench, options)
    with progress:
        result = bench.run()
    single = len(result.runs) == 1
    for run in result.runs:
        if single or args.verbose:
            _print_run(log, run, options, single, args.dumpProfile)
    if not single:
        _print_tables(result)
    _exports(args, result, bench)
    if args.report:
        from kiln.bench.report import write_report

        target = write_report(result, args.report, cmd)
        log.info(f"Report written to {target}/report.md (with report.json and charts)")
    for run in result.runs:
        if run.status != "ok":
            (log.error if run.status == "failed" else log.warning)(
                f"{run.peer}{_batch(run)} {run.status}: {run.note}")
    state = "FAILED" if result.failed else "PASSED"
    log.frame(state, cmd)
    return 1 if result.failed else 0


def _precision_label(config: Any) -> str:
    """trtexec's spelling: FP32, FP32+FP16, FP32+INT8, FP32+FP16+INT8 (and FP8)."""
    if config.precision in ("int8", "fp8"):
        floats = "FP32+FP16" if config.fallback_precision == "fp16" else "FP32"
        return f"{floats}+{config.precision.upper()}"
    return "FP32+FP16" if config.precision == "fp16" else config.precision.upper()


def _batch(run: PeerRun) -> str:
    return f" (batch {run.batch})" if run.batch is not None else ""


def _print_options(log: TrtexecLog, args: argparse.Namespace, bench: Benchmark,
                   options: InferenceOptions) -> None:
    from kiln.bench.benchmark import environment

    assert bench.context is not None
    engine = bench.engine
    log.info("=== Model Options ===")
    log.info(f"Format: {'kiln engine' if engine is not None else 'ONNX'}")
    log.info(f"Model: {args.model}")
    log.info("=== Build Options ===")
    if engine is not None:
        log.info(f"Precision: {engine.precision} (from the engine)")
    else:
        log.info(f"Precision: {_precision_label(bench.context.config)}")
        log.info(f"Optimization level: {args.builderOptimizationLevel}")
    profiles = bench.context.config.profiles
    log.info(f"Profiles: {len(profiles) if profiles else 'default'}")
    log.info("=== Inference Options ===")
    batches = ",".join(str(b) for b in bench.batch_list if b is not None)
    log.info(f"Batch: {'Explicit' if not batches else 'Explicit, sweep ' + batches}")
    for spec in bench.specs[bench.batch_list[0]]:
        given = spec.name in bench.given_inputs
        dims = "x".join(map(str, spec.shape)) or "scalar"
        log.info(f"Input inference shape : {spec.name}={dims}")
        log.info(f"Using {'values loaded from file' if given else 'random values'} for input "
                 f"{spec.name}" + ("" if given else f" in {spec.values_text()}"))
    duration = "until interrupted" if options.duration_s < 0 else f"{fmt(options.duration_s)}s"
    log.info(f"Iterations: {options.iterations}")
    log.info(f"Duration: {duration} (+ {fmt(options.warmup_ms)}ms warm up)")
    log.info("Inference Streams: 1")
    log.info(f"Data transfers: {'Disabled' if options.no_data_transfers else 'Enabled'}")
    log.info(f"CUDA Graph: {_cuda_graph_text(options, bench.context.device.type)}")
    log.info(f"Separate profiling: "
             f"{'Enabled' if options.separate_profile_run else 'Disabled'}")
    peers = ", ".join(p.name for p in bench.peers)
    log.info(f"Peers: {peers} (baseline: {bench.peers[0].name})")
    log.info("=== Reporting Options ===")
    log.info(f"Verbose: {'Enabled' if args.verbose else 'Disabled'}")
    log.info(f"Averages: {options.avg_runs} inferences")
    log.info(f"Percentiles: {','.join(fmt(p) for p in options.percentiles)}")
    log.info(f"Profile: {'Enabled' if options.profile else 'Disabled'}")
    log.info(f"Export timing to JSON file: {args.exportTimes or ''}")
    log.info(f"Export profile to JSON file: {args.exportProfile or ''}")
    log.info(f"Export layer info to JSON file: {args.exportLayerInfo or ''}")
    log.info(f"Report: {args.report or ''}")
    env = environment(bench.context.device)
    log.info("=== Device Information ===")
    log.info(f"Selected Device: {env['device_name']}")
    if bench.context.device.type == "cuda":
        log.info(f"Compute Capability: {env['capability']}")
        log.info(f"SMs: {env['sms']}")
        log.info(f"Device Global Memory: {env['device_memory_bytes'] // 2**20} MiB")
    else:
        log.info(f"CPU threads: {env['cpu_threads']}")
    log.info(f"kiln: {env['kiln']}, torch: {env['torch']}, onnxruntime: "
             f"{env.get('onnxruntime') or 'not installed'}")
    if options.use_cuda_graph and bench.context.device.type == "cpu":
        log.warning("--useCudaGraph does not apply on the CPU; timing without CUDA graphs.")
    log.info("")


def _cuda_graph_text(options: InferenceOptions, device: str) -> str:
    if device == "cpu":
        return "n/a (CPU)"
    if options.use_cuda_graph is None:
        return "Enabled (kiln's default on CUDA; --noCudaGraph turns it off)"
    return "Enabled" if options.use_cuda_graph else "Disabled"


def _print_run(log: TrtexecLog, run: PeerRun, options: InferenceOptions, single: bool,
               dump_profile: bool) -> None:
    if run.summary is None or run.trace is None:
        return
    if not single:
        log.info(f"=== Peer: {run.peer}{_batch(run)} ===")
    if run.cuda_graph == "not available in this kiln":
        log.warning("--useCudaGraph: this kiln's runtime has no CUDA graphs yet; timed "
                    "without them.")
    if run.trace.interrupted:
        log.warning("Timing was interrupted; the summary covers the queries that ran.")
    for line in prolog_lines(run.trace):
        log.info(line)
    log.info("")
    for line in trace_detail_lines(run.trace.traces, options.avg_runs, run.trace.device):
        log.info(line)
    log.info("")
    for line in run.summary.lines():
        log.info(line)
    for line in run.summary.warnings:
        log.warning(line)
    log.info("Explanations of the performance metrics are printed in the verbose logs.")
    for line in EXPLANATIONS:
        log.verbose(line)
    log.info("")
    if run.profile is not None and dump_profile:
        for line in run.profile.table_lines():
            log.info(line)
        log.info("")


def _print_tables(result: BenchmarkResult) -> None:
    from kiln.bench.tables import peers_table, sweep_table

    base = result.baseline or "none"
    print(f"\nPeers (baseline and accuracy reference: {base}; speedup = baseline median "
          f"latency / engine median latency):\n")
    print(peers_table(result))
    sweep = sweep_table(result)
    if sweep:
        print("\nThroughput and latency against batch size:\n")
        print(sweep)
    print()


def _exports(args: argparse.Namespace, result: BenchmarkResult, bench: Benchmark) -> None:
    ran = [r for r in result.runs if r.status == "ok" and r.trace is not None]
    if args.exportTimes:
        if not ran:
            raise KilnError("--exportTimes: no engine ran, so there are no times to write")
        write_json(args.exportTimes, times_json(ran[0].trace))
    if args.exportProfile:
        profiled = next((r for r in ran if r.profile is not None), None)
        if profiled is None:
            raise KilnError("--exportProfile: no kiln engine ran, so there is no layer profile",
                            hint="include a kiln peer (kiln, kiln-fp16, ...)")
        write_json(args.exportProfile, profile_json(profiled.profile))
    if args.exportLayerInfo:
        if bench.layer_info is None:
            raise KilnError("--exportLayerInfo: no kiln engine ran, so there is no layer info",
                            hint="include a kiln peer (kiln, kiln-fp16, ...)")
        write_json(args.exportLayerInfo, bench.layer_info)


def _command_line(args: argparse.Namespace) -> str:
    argv = sys.argv[1:]
    if argv and argv[0] == "bench":
        return "kiln " + shlex.join(argv)
    return f"kiln bench {shlex.quote(args.model)}"


class _Progress:
    """Progress on stderr: a live line on a terminal, one line per phase otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = sys.stderr.isatty() and not quiet
        self.last: str | None = None
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TimeElapsedColumn(), console=console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("starting", total=1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, message: str, fraction: float | None) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, description=message, completed=fraction or 0.0)
        elif message != self.last:
            print(f"kiln bench: {message}", file=sys.stderr, flush=True)
            self.last = message
