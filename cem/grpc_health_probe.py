"""Exit 0 when a gRPC server reports SERVING on the standard health service.

Used by container healthchecks: ``python -m cem.grpc_health_probe HOST:PORT``.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(target: str, timeout_s: float = 3.0, service: str = "") -> bool:
    """True when ``target`` answers SERVING within ``timeout_s``."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m cem.grpc_health_probe HOST:PORT\n")
        return 2
    return 0 if probe(args[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
