"""What the edge, the cloud and the tap agree on beyond the proto itself.

- One message-size limit for both ends of a channel (gRPC's 4 MiB default
  refuses a batch of 128 full-size features).
- The fully qualified service name (health checks and reflection use it).
- The line a server prints once it listens, so scripts that start it on port 0
  can read the port: ``LISTENING 127.0.0.1:50051``.
- Per-stage server timing, on request: a unary call whose metadata carries
  ``cem-timing: 1`` is answered with a ``cem-server-timing`` trailer such as
  ``parse=0.012,validate=0.020,queue=0.004,decoder=0.311,resume=0.041,respond=0.018``
  (milliseconds per stage, in order; the stages are the cloud's, see
  ``cloud_server.stages``). Benchmarks use it to show where a request's time goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from protos import cem_split_pb2 as pb

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
LISTENING_PREFIX = "LISTENING"
TIMING_REQUEST_KEY = "cem-timing"
SERVER_TIMING_KEY = "cem-server-timing"
_LISTENING_RE = re.compile(rf"^{LISTENING_PREFIX} (?P<host>\S+):(?P<port>\d+)$")


def grpc_message_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel/server options that set the same send and receive limit."""
    return [
        ("grpc.max_send_message_length", int(max_message_bytes)),
        ("grpc.max_receive_message_length", int(max_message_bytes)),
    ]


def format_listening_line(host: str, port: int) -> str:
    """``LISTENING host:port`` (IPv6 hosts keep their brackets: ``LISTENING [::1]:50051``)."""
    return f"{LISTENING_PREFIX} {host}:{port}"


def parse_listening_line(line: str) -> tuple[str, int] | None:
    """``(host, port)`` from a ``LISTENING`` line, or None for any other line."""
    match = _LISTENING_RE.match(line.strip())
    return (match["host"], int(match["port"])) if match else None


def format_server_timing(stages: Iterable[tuple[str, float]]) -> str:
    """``(stage, milliseconds)`` pairs as a ``cem-server-timing`` value."""
    return ",".join(f"{name}={ms:.4f}" for name, ms in stages)


def parse_server_timing(value: str) -> dict[str, float]:
    """A ``cem-server-timing`` value as ``{stage: milliseconds}`` in stage order; ValueError when malformed."""
    stages: dict[str, float] = {}
    for part in value.split(","):
        name, _, ms = part.partition("=")
        if not name or not ms:
            raise ValueError(f"expected stage=milliseconds pairs, got {value!r}")
        stages[name] = float(ms)
    return stages
