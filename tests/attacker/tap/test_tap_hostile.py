"""Hostile requests through the tap: a request the cloud refuses cannot hide other traffic from the auditor."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest
import torch
from tap_helpers import make_request

from cem.captures.reader import CaptureStore
from protos import cem_split_pb2_grpc as pb_grpc


@pytest.mark.parametrize("field", ["scale", "offset"])
def test_nan_in_an_ignored_field_is_refused_and_hides_nothing(tap, channels, model_id: str, tmp_path: Path,
                                                              field: str) -> None:
    """Issue 10 item 1: a float32 request with a NaN int8 ``scale``/``offset`` was answered OK and made
    the tap drop its whole write batch (10 such requests among 640: 0/640 recorded)."""
    proxy = tap()
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    generator = torch.Generator().manual_seed(7)
    answered, refused = 0, 0
    for i in range(40):
        request = make_request(model_id, f"r{i}", torch.rand((2, 8, 8, 8), generator=generator))
        if i % 8 == 3:
            setattr(request.features, field, math.nan)
            with pytest.raises(grpc.RpcError) as error:
                stub.Infer(request, timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"{field}" in error.value.details()
            refused += 1
        else:
            stub.Infer(request, timeout=10)
            answered += 1
    stats = proxy.terminate()
    assert (answered, refused) == (35, 5)
    assert stats["dropped_write_failed"] == 0 and stats["rejected_upstream"] == refused  # counted, not stored
    assert CaptureStore(tmp_path / "captures").summary().requests == answered  # every answered request recorded


def test_a_message_over_the_limit_is_refused_by_the_tap_and_not_recorded(tap, channels, model_id: str,
                                                                         tmp_path: Path) -> None:
    """Issue 10 item 5: a 200 MiB request was buffered (RSS 61 MB -> 1.17 GB) and written as a 200 MB shard."""
    proxy = tap("--max-message-bytes", str(64 * 1024))
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    small = make_request(model_id, "small", torch.rand((2, 8, 8, 8)))
    large = make_request(model_id, "large", torch.rand((40, 8, 8, 8)))  # 80 KiB of float32 features
    assert large.ByteSize() > 64 * 1024 > small.ByteSize()
    with pytest.raises(grpc.RpcError) as error:
        stub.Infer(large, timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stub.Infer(small, timeout=10)
    stats = proxy.terminate()
    assert stats["offered"] == stats["recorded"] == 1  # the oversized request never reached the recorder
    assert CaptureStore(tmp_path / "captures").summary().requests == 1
