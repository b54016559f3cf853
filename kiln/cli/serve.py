"""Serve engines over KServe v2 (Triton's HTTP and gRPC protocol), with dynamic batching.

  kiln serve MODEL_REPOSITORY [--host 127.0.0.1] [--http-port 8000] [--grpc-port 8001]
             [--metrics-port 8002]

The repository has Triton's layout: <model>/config.pbtxt and <model>/<version>/model.kiln,
or model.onnx, built at load as config.pbtxt asks. Triton's clients, perf_analyzer and
Prometheus work unchanged. SIGTERM drains the requests in flight, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from kiln.cli.main import command
from kiln.errors import KilnError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", metavar="MODEL_REPOSITORY", help="the model repository")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, loopback only; 0.0.0.0: all)")
    p.add_argument("--http-port", type=_port, default=8000, help="HTTP port (default 8000; "
                   "0: any free port; -1: no HTTP)")
    p.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=_port, default=8002,
                   help="Prometheus metrics port (default 8002)")
    p.add_argument("--http-max-input-size", type=int, default=64 * 2**20,
                   help="largest request body (and gRPC message), bytes (default 64 MiB)")
    p.add_argument("--max-queue-size", type=int, default=1024,
                   help="queue bound per model where config.pbtxt sets none (default 1024)")
    p.add_argument("--exit-timeout-secs", type=float, default=30.0,
                   help="how long shutdown waits for requests in flight (default 30)")
    p.add_argument("--strict-readiness", type=_bool, default=True,
                   help="ready only when every model loaded (default true)")
    p.add_argument("--cpu-threads", type=int,
                   help="torch threads per CPU operation (default: torch's choice)")


def _port(text: str) -> int | None:
    port = int(text)
    if port == -1:
        return None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535 (or -1 for off)")
    return port


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return text.lower() in ("true", "1")


@command("serve", add_arguments)
def run(args: argparse.Namespace) -> int:
    try:
        from kiln.serve.server import ServeOptions, Server
    except ImportError as exc:
        raise KilnError(f"`kiln serve` needs a package that is not installed ({exc.name})",
                        hint="pip install 'kiln[serve]'") from None
    if args.cpu_threads:
        import torch

        torch.set_num_threads(args.cpu_threads)
    logging.basicConfig(level=logging.INFO, format="kiln serve: %(message)s")
    options = ServeOptions(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, max_input_bytes=args.http_max_input_size,
        max_queue_size=args.max_queue_size, exit_timeout_s=args.exit_timeout_secs,
        strict_readiness=args.strict_readiness)
    asyncio.run(Server(args.repository, options).serve())
    return 0
