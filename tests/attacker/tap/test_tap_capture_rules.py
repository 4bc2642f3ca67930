"""What the tap records: the requests the cloud answered, under the model that answered, each once."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from tap_helpers import make_request

from cem.captures.reader import CaptureStore
from protos import cem_split_pb2_grpc as pb_grpc


def features(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.rand((batch, 8, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_a_stream_records_only_what_the_cloud_answered(tap, channels, model_id: str, tmp_path: Path) -> None:
    """Issue 10 item 5: the tap stored requests the cloud refused. Now they are counted, not stored."""
    proxy = tap()
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    bad = make_request(model_id, "bad", features(3))
    bad.features.shape[:] = [2, 8, 8, 9]  # the cloud refuses the shape
    requests = [make_request(model_id, "good-0", features(1)), make_request(model_id, "good-1", features(2)), bad]
    answered = []
    with pytest.raises(grpc.RpcError) as caught:
        for response in stub.InferStream(iter(requests), timeout=10):
            answered.append(response.request_id)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert answered == ["good-0", "good-1"]
    stats = proxy.terminate()
    assert (stats["recorded"], stats["rejected_upstream"]) == (2, 1)
    assert CaptureStore(tmp_path / "captures").summary().requests == 2


def test_an_empty_model_id_is_filed_under_the_model_that_answered(tap, channels, model_id: str,
                                                                  tmp_path: Path) -> None:
    """Issue 10 item 8: the cloud serves requests with an empty model id, but audits (which read the captures
    of one model id) never saw them. The tap now files them under the model id of the cloud's answer."""
    proxy = tap()
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    stub.Infer(make_request("", "", features(1), sample_ids=["digits/test/0", "digits/test/1"]), timeout=10)
    stub.Infer(make_request(model_id, "named", features(2), sample_ids=["digits/test/2", "digits/test/3"]), timeout=10)
    proxy.terminate()
    store = CaptureStore(tmp_path / "captures")
    assert [m.model_id for m in store.summary().models] == [model_id]
    captured = store.load(model_id)
    assert captured.sample_ids == [f"digits/test/{i}" for i in range(4)]
    assert torch.allclose(captured.features[:2], features(1))


def test_a_retry_is_recorded_once_but_a_reused_id_cannot_hide_new_features(tap, channels, model_id: str,
                                                                          tmp_path: Path) -> None:
    """Issue 10 item 8: client retries were stored as new captures. De-duplication is by request id *and*
    content, so resending other features under a recorded id does not make them vanish from the audit."""
    proxy = tap()
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    original = make_request(model_id, "same-id", features(1))
    for _ in range(3):  # the edge resends the identical bytes after an UNAVAILABLE or a lost answer
        stub.Infer(original, timeout=10)
    stub.Infer(make_request(model_id, "same-id", features(2)), timeout=10)  # same id, other features
    stats = proxy.terminate()
    assert (stats["recorded"], stats["duplicates"]) == (2, 2)
    captured = CaptureStore(tmp_path / "captures").load(model_id)
    assert torch.allclose(captured.features[:2], features(1)) and torch.allclose(captured.features[2:], features(2))
