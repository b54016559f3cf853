"""Compiles kiln/serve/proto/*.proto into the descriptor set `kiln serve` loads (run after an
edit to a .proto; its output is committed).

    python tools/make_serve_protos.py        # needs grpcio-tools (requirements/dev.txt)

It runs, in effect:

    python -m grpc_tools.protoc -I kiln/serve/proto --include_imports \
        --descriptor_set_out=kiln/serve/proto/triton.binpb grpc_service.proto model_config.proto

Why a descriptor set rather than generated _pb2 modules: see kiln/serve/proto/__init__.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "kiln" / "serve" / "proto"
SOURCES = ("grpc_service.proto", "model_config.proto")
OUTPUT = PROTO_DIR / "triton.binpb"


def compile_descriptor_set(out: Path) -> None:
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO_DIR}", "--include_imports", f"--descriptor_set_out={out}",
            *SOURCES]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see above)")


def main() -> int:
    compile_descriptor_set(OUTPUT)
    print(f"wrote {OUTPUT.relative_to(PROTO_DIR.parents[2])} ({OUTPUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
