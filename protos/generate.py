"""Regenerate the committed Python stubs from ``protos/cem_split.proto``.

Run from anywhere: ``python -m protos.generate``. A test compares the committed
stubs with a fresh generation and fails when they are stale. Besides the
message and service modules it writes ``cem_split_pb2.pyi``, the message types
mypy checks the servicer, the client and the codec against.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO = "protos/cem_split.proto"


def generate(out_dir: Path = REPO_ROOT) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        str(REPO_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {PROTO}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT)
