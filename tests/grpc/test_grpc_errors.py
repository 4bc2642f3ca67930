"""The one error -> status table (and INTERNAL over a real connection), settings validation, the LISTENING line."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
import torch

from cem.codec import TensorTooLargeError, encode_tensor
from cem.errors import (
    BundleFormatError,
    BundleIntegrityError,
    BundleNotFoundError,
    ConfigError,
    TensorCodecError,
)
from cem.wire import format_listening_line, parse_listening_line
from cloud_server.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    RequestTooLargeError,
    ServiceUnavailableError,
    status_for,
)
from cloud_server.runtime import DecoderRuntime
from cloud_server.server import CloudServer
from cloud_server.settings import ServerSettings
from edge_client.settings import ClientSettings, RetryPolicy
from grpc_helpers import SERVING, health_status, open_stub
from protos import cem_split_pb2 as pb

EXPECTED = {
    TensorCodecError("expected X, got Y"): grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequestError("expected X, got Y"): grpc.StatusCode.INVALID_ARGUMENT,
    TensorTooLargeError("expected X, got Y"): grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestTooLargeError("expected X, got Y"): grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelNotFoundError("expected X, got Y"): grpc.StatusCode.NOT_FOUND,
    BundleIntegrityError("expected X, got Y"): grpc.StatusCode.FAILED_PRECONDITION,
    BundleFormatError("expected X, got Y"): grpc.StatusCode.FAILED_PRECONDITION,
    BundleNotFoundError("expected X, got Y"): grpc.StatusCode.FAILED_PRECONDITION,
    ConfigError("expected X, got Y"): grpc.StatusCode.FAILED_PRECONDITION,
    ServiceUnavailableError("expected X, got Y"): grpc.StatusCode.UNAVAILABLE,
}


@pytest.mark.parametrize("error", list(EXPECTED), ids=lambda e: type(e).__name__)
def test_every_known_error_maps_to_its_status_with_its_message(error: Exception) -> None:
    assert status_for(error) == (EXPECTED[error], "expected X, got Y")


def test_unexpected_errors_are_logged_and_become_internal_never_unknown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="cloud_server.errors"):
        code, message = status_for(ZeroDivisionError("secret detail"))
    assert code == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in message and "secret detail" not in message
    assert any(record.exc_info for record in caplog.records)


def test_listening_line_round_trip() -> None:
    line = format_listening_line("127.0.0.1", 41234)
    assert line == "LISTENING 127.0.0.1:41234"
    assert parse_listening_line(line + "\n") == ("127.0.0.1", 41234)
    assert parse_listening_line("[::1]:5") is None and parse_listening_line("LISTENING nowhere") is None
    assert parse_listening_line(format_listening_line("[::1]", 5)) == ("[::1]", 5)


@pytest.mark.parametrize(
    "overrides, text",
    [
        ({"port": 70000}, "port"),
        ({"device": "tpu"}, "device"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 64, "max_queue": 8}, "max_queue"),
        ({"max_message_bytes": 10}, "max_message_bytes"),
        ({"max_delay_ms": -1}, "max_delay_ms"),
        ({"tls_cert": Path("/nonexistent.pem"), "tls_key": Path("/nonexistent.key")}, "readable file"),
    ],
)
def test_server_settings_refuse_bad_values(overrides: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        ServerSettings(bundle_dir=Path("."), **overrides)


def test_client_settings_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="wire dtype"):
        ClientSettings(wire_dtype="bfloat16")
    with pytest.raises(ConfigError, match="deadlines"):
        ClientSettings(timeout_s=0)
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    assert [RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.3).backoff_s(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]


def test_a_failing_decoder_answers_internal_over_the_wire_and_the_server_keeps_serving(digits_bundle: Path) -> None:
    class FaultyRuntime(DecoderRuntime):
        def predict(self, features: torch.Tensor) -> torch.Tensor:
            if features.shape[0] == 3:
                raise RuntimeError("decoder exploded on private detail")
            return super().predict(features)

    server = CloudServer(ServerSettings(bundle_dir=digits_bundle, port=0, device="cpu"), FaultyRuntime(digits_bundle, "cpu"))
    server.start()
    channel, stub = open_stub(server.port)
    try:
        assert server.wait_until_serving(30)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(pb.InferRequest(features=encode_tensor(torch.rand(3, 8, 8, 8))), timeout=10)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "RuntimeError" in info.value.details() and "private detail" not in info.value.details()
        assert health_status(channel) == SERVING
        assert len(stub.Infer(pb.InferRequest(features=encode_tensor(torch.rand(2, 8, 8, 8))), timeout=10).predictions) == 2
    finally:
        channel.close()
        server.stop(0).wait(10)
