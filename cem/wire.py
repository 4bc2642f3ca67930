"""What the edge, the cloud and the tap agree on beyond the proto itself.

- One message-size limit for both ends of a channel (gRPC's 4 MiB default
  refuses a batch of 128 full-size features).
- The fully qualified service name (health checks and reflection use it).
- The line a server prints once it listens, so scripts that start it on port 0
  can read the port: ``LISTENING 127.0.0.1:50051``.
"""

from __future__ import annotations

import re

from protos import cem_split_pb2 as pb

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
LISTENING_PREFIX = "LISTENING"
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
