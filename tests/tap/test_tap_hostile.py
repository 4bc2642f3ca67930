"""Hostile requests through the tap: a request the cloud refuses cannot hide other traffic from the auditor."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest
import torch
from tap_helpers import make_request

from attacker.tap.reader import CaptureStore
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
    assert stats["dropped_write_failed"] == 0 and stats["invalid"] == refused  # counted, not stored
    assert CaptureStore(tmp_path / "captures").summary().requests == answered  # every answered request recorded
