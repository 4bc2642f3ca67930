"""The one error -> status table for every error type (and INTERNAL over a real connection), settings
validation, the LISTENING line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from logging.handlers import BufferingHandler
from pathlib import Path

import grpc
import pytest
import torch
from error_types import all_cem_errors, make_error, qualified_name
from grpc_helpers import SERVING, health_status, open_stub

from cem.codec import encode_tensor
from cem.errors import (
    BundleError,
    BundleFormatError,
    BundleIntegrityError,
    BundleNotFoundError,
    CaptureStoreError,
    CEMError,
    ConfigError,
    DatasetError,
    DatasetNotFoundError,
    InvalidCaptureError,
    MetricInputError,
    ServiceStartError,
    TensorCodecError,
    TensorTooLargeError,
    UnknownNameError,
)
from cem.wire import format_listening_line, parse_listening_line
from cloud_server.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    RequestTooLargeError,
    ServiceError,
    ServiceUnavailableError,
    status_for,
)
from cloud_server.runtime import DecoderRuntime
from cloud_server.server import CloudServer
from cloud_server.settings import ServerSettings
from edge_client.settings import ClientSettings, RetryPolicy
from protos import cem_split_pb2 as pb

# What the cloud answers for each error it raises (docs/grpc.md), the caller seeing the error's own message.
CLOUD_STATUS = {
    TensorTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TensorCodecError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    BundleError: grpc.StatusCode.FAILED_PRECONDITION,
    BundleFormatError: grpc.StatusCode.FAILED_PRECONDITION,
    BundleIntegrityError: grpc.StatusCode.FAILED_PRECONDITION,
    BundleNotFoundError: grpc.StatusCode.FAILED_PRECONDITION,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    ServiceUnavailableError: grpc.StatusCode.UNAVAILABLE,
}
# Kernel and cloud errors the cloud never raises (it loads no data set, scores nothing, looks no name up in
# a registry, starts no child service, touches no capture, and raises ServiceError's subclasses only). Like
# every other app's errors, which it cannot even import, they take the table's CEMError row: INTERNAL, logged,
# message withheld.
NEVER_IN_THE_CLOUD = {ServiceError, DatasetError, DatasetNotFoundError, MetricInputError, ServiceStartError,
                      UnknownNameError, CaptureStoreError, InvalidCaptureError}
CLOUD_PACKAGES = ("cem", "cloud_server")


@pytest.fixture
def errors_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[logging.LogRecord]]:
    """What ``cloud_server.errors`` logs, caught on that logger and kept from the root handlers (this test's alone)."""
    logger = logging.getLogger("cloud_server.errors")
    handler = BufferingHandler(capacity=1000)
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.ERROR)
    logger.addHandler(handler)
    try:
        yield handler.buffer
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("error_type", all_cem_errors(), ids=qualified_name)
def test_every_cem_error_maps_to_a_deliberate_status(
    error_type: type[CEMError], errors_log: list[logging.LogRecord]
) -> None:
    error = make_error(error_type, "expected X, got Y")
    code, message = status_for(error)
    if error_type in CLOUD_STATUS:
        assert (code, message) == (CLOUD_STATUS[error_type], "expected X, got Y")
        assert not errors_log
        return
    arises_in_the_cloud = error_type.__module__.split(".")[0] in CLOUD_PACKAGES and error_type not in NEVER_IN_THE_CLOUD
    assert not arises_in_the_cloud, f"decide the status code of {qualified_name(error_type)} (cloud_server/errors.py)"
    assert code == grpc.StatusCode.INTERNAL and "expected X" not in message
    assert [record.exc_info[1] for record in errors_log if record.exc_info] == [error]


def test_unexpected_errors_are_logged_and_become_internal_never_unknown(errors_log: list[logging.LogRecord]) -> None:
    error = ZeroDivisionError("secret detail")
    code, message = status_for(error)
    assert code == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in message and "secret detail" not in message
    assert [record.exc_info[1] for record in errors_log if record.exc_info] == [error]


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
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.3)
    assert [policy.backoff_s(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]


def test_a_failing_decoder_answers_internal_over_the_wire_and_the_server_keeps_serving(digits_bundle: Path) -> None:
    class FaultyRuntime(DecoderRuntime):
        def predict(self, features: torch.Tensor) -> torch.Tensor:
            if features.shape[0] == 3:
                raise RuntimeError("decoder exploded on private detail")
            return super().predict(features)

    settings = ServerSettings(bundle_dir=digits_bundle, port=0, device="cpu")
    server = CloudServer(settings, FaultyRuntime(digits_bundle, "cpu"))
    server.start()
    channel, stub = open_stub(server.port)
    try:
        assert server.wait_until_serving(30)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(pb.InferRequest(features=encode_tensor(torch.rand(3, 8, 8, 8))), timeout=10)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "RuntimeError" in info.value.details() and "private detail" not in info.value.details()
        assert health_status(channel) == SERVING
        request = pb.InferRequest(features=encode_tensor(torch.rand(2, 8, 8, 8)))
        assert len(stub.Infer(request, timeout=10).predictions) == 2
    finally:
        channel.close()
        server.stop(0).wait(10)
