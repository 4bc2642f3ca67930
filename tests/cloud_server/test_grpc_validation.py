"""Every malformed request gets INVALID_ARGUMENT / RESOURCE_EXHAUSTED / NOT_FOUND with a readable message,
and the server keeps SERVING and answering afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_helpers import SERVING, health_status, open_stub

from cem.codec import encode_tensor
from cem.wire import SERVICE_NAME
from cloud_server import CloudServer, ServerSettings, create_server
from protos import cem_split_pb2 as pb

FEATURES = (8, 8, 8)


def _request(batch: int = 2, wire_dtype: str = "float32", **fields: object) -> pb.InferRequest:
    """A valid request, then ``fields`` overwritten (tensor fields: shape, data, dtype, scale)."""
    request = pb.InferRequest(request_id="r1", features=encode_tensor(torch.rand(batch, *FEATURES), wire_dtype))
    for name, value in fields.items():
        if name == "shape":
            del request.features.shape[:]
            request.features.shape.extend(value)  # type: ignore[arg-type]
        elif name in ("data", "dtype", "scale"):
            setattr(request.features, name, value)
        elif name == "sample_ids":
            request.sample_ids.extend(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    return request


def _nan_request() -> pb.InferRequest:
    data = np.random.default_rng(0).random((1, *FEATURES), dtype=np.float32)
    data[0, 3, 2, 1] = np.nan
    return _request(1, data=data.astype("<f4").tobytes())


def _inf_request() -> pb.InferRequest:
    data = np.zeros((1, *FEATURES), dtype="<f2")
    data[0, 0, 0, 0] = np.inf
    return _request(1, "float16", data=data.tobytes())


INVALID = {
    "wrong byte count": (_request(data=b"\0" * 100), "expected 4096 bytes"),
    "negative shape": (_request(shape=[-1, 8, 8, 8]), "non-negative"),
    "absurd feature dimension": (_request(shape=[1, 8, 8, 2**40]), "expected shape (B, 8, 8, 8)"),
    "wrong feature shape": (_request(shape=[2, 8, 16, 4]), "expected shape (B, 8, 8, 8)"),
    "wrong rank": (_request(shape=[2, 512]), "expected shape (B, 8, 8, 8)"),
    "unknown dtype": (_request(dtype=9), "expected tensor dtype"),
    "unspecified dtype": (_request(dtype=0), "expected tensor dtype"),
    "NaN": (_nan_request(), "expected finite values, got 1 NaN or Inf"),
    "Inf in float16": (_inf_request(), "expected finite values"),
    "int8 without scale": (_request(wire_dtype="int8", scale=0.0), "int8 scale"),
    "empty batch": (_request(0), "got an empty batch"),
    "no features": (pb.InferRequest(request_id="r"), "expected a features tensor"),
    "sample ids do not fit": (_request(2, sample_ids=["digits/test/1"]), "expected 2 sample_ids"),
    "superscript digit in a sample id": (_request(2, sample_ids=["digits/test/1", "digits/test/²"]), "in ASCII"),
    "sample id in no known split": (_request(2, sample_ids=["digits/val/1", "digits/test/2"]), "expected a sample id"),
    "NaN in the ignored float32 scale": (_request(scale=float("nan")), "even for float32, which ignores them"),
}

TOO_LARGE = {
    "batch above max_batch": (_request(shape=[65, 8, 8, 8]), "expected at most 64 samples per request, got 65"),
    "absurd batch": (_request(shape=[2**40, 8, 8, 8]), "expected at most 64 samples"),
}


@pytest.fixture(scope="module")
def shared_server(digits_bundle: Path) -> Iterator[CloudServer]:
    """One server with small limits (max_batch 64, 256 KiB messages) shared by this module's tests."""
    settings = ServerSettings(bundle_dir=digits_bundle, port=0, device="cpu", max_batch=64,
                              max_message_bytes=256 * 1024, max_delay_ms=5)
    server, _ = create_server(settings)
    server.start()
    assert server.wait_until_serving(30)
    yield server
    server.stop(0).wait(10)


@pytest.fixture(scope="module")
def stub(shared_server: CloudServer):
    channel, stub = open_stub(shared_server.port)
    yield channel, stub
    channel.close()


def _assert_still_serving(channel: grpc.Channel, stub) -> None:
    assert health_status(channel) == SERVING
    assert health_status(channel, "") == SERVING
    response = stub.Infer(_request(3), timeout=10)
    assert len(response.predictions) == 3


REFUSED = [(grpc.StatusCode.INVALID_ARGUMENT, INVALID, case) for case in sorted(INVALID)] + [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE, case) for case in sorted(TOO_LARGE)
]


@pytest.mark.parametrize("code, table, case", REFUSED, ids=[f"{code.name}-{case}" for code, _, case in REFUSED])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(stub, code: grpc.StatusCode, table: dict,
                                                                    case: str) -> None:
    """Invalid requests get INVALID_ARGUMENT, oversized batches RESOURCE_EXHAUSTED; each with its reason."""
    channel, client = stub
    request, text = table[case]
    with pytest.raises(grpc.RpcError) as info:
        client.Infer(request, timeout=10)
    assert info.value.code() == code
    assert text in info.value.details()
    _assert_still_serving(channel, client)


def test_message_over_the_size_limit_gets_resource_exhausted(stub) -> None:
    channel, client = stub
    request = _request(1, data=b"\0" * (300 * 1024))  # the server's limit is 256 KiB
    with pytest.raises(grpc.RpcError) as info:
        client.Infer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    _assert_still_serving(channel, client)


def test_a_huge_model_id_gets_a_bounded_not_found(stub) -> None:
    """Issue 10 item 7: the id was echoed whole; from 16 KiB the client got a metadata error, not NOT_FOUND."""
    channel, client = stub
    with pytest.raises(grpc.RpcError) as info:
        client.Infer(_request(model_id="x" * 200_000), timeout=10)  # over 16 KiB, under the message limit
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(info.value.details()) < 300 and "(200000 characters)" in info.value.details()
    _assert_still_serving(channel, client)


def test_another_model_id_gets_not_found_and_the_served_model_answers(stub, shared_server: CloudServer) -> None:
    channel, client = stub
    with pytest.raises(grpc.RpcError) as info:
        client.Infer(_request(model_id="0123456789abcdef"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "got '0123456789abcdef'" in info.value.details()
    served = client.Infer(_request(model_id=shared_server.runtime.model_id), timeout=10)
    assert served.model_id == shared_server.runtime.model_id and served.request_id == "r1"
    _assert_still_serving(channel, client)


def test_a_bad_message_ends_a_stream_with_its_status_after_the_good_ones(stub) -> None:
    _, client = stub
    responses = client.InferStream(iter([_request(2), _request(1), _request(data=b"")]), timeout=10)
    assert [len(r.predictions) for r in _take(responses, 2)] == [2, 1]
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _take(iterator, n: int) -> list:
    return [next(iterator) for _ in range(n)]


def test_model_info_describes_the_served_model(stub, shared_server: CloudServer) -> None:
    _, client = stub
    info = client.GetModelInfo(pb.ModelInfoRequest(), timeout=10)
    manifest = shared_server.runtime.manifest
    assert info.model_id == manifest.model_id and info.arch == "vgg11_bn_sgm" and info.cut_layer == 4
    assert tuple(info.feature_shape) == FEATURES
    assert list(info.accepted_dtypes) == [pb.FLOAT32, pb.FLOAT16, pb.INT8]
    assert info.noise_std == pytest.approx(manifest.noise_std)
    assert list(info.class_names) == [str(d) for d in range(10)] and info.dataset == "digits"
    assert info.max_batch == 64 and info.max_message_bytes == 256 * 1024


def test_reflection_lists_the_services(stub) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel, _ = stub
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(reflection.ServerReflectionInfo(iter([request]), timeout=10))
    names = {service.name for service in response.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
