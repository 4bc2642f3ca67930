"""Helpers the gRPC tests share (imported by name; the server fixtures live in server_fixtures.py)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cem.wire import DEFAULT_MAX_MESSAGE_BYTES, SERVICE_NAME, grpc_message_options
from protos import cem_split_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def open_stub(port: int,
              max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[grpc.Channel, pb_grpc.SplitInferenceStub]:
    """A raw channel and stub, for sending requests the EdgeClient would never build."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=grpc_message_options(max_message_bytes))
    return channel, pb_grpc.SplitInferenceStub(channel)


def health_status(channel: grpc.Channel, service: str = SERVICE_NAME) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
