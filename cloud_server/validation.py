"""Request checks: everything a remote caller sends is validated before the decoder sees it.

Order: model id, presence of features, batch limit (from the declared shape,
before any byte is read), then the codec's dtype/shape/size/finiteness checks
against the served feature shape, then the optional sample ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cem.codec import decode_tensor
from cem.data.sample_ids import parse_sample_id
from cem.errors import ConfigError, echo
from cloud_server.errors import InvalidRequestError, ModelNotFoundError, RequestTooLargeError
from protos import cem_split_pb2 as pb

MAX_SAMPLE_ID_CHARS = 256
MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True)
class RequestLimits:
    model_id: str
    feature_shape: tuple[int, int, int]
    max_batch: int
    max_bytes: int


def decode_request(request: pb.InferRequest, limits: RequestLimits) -> torch.Tensor:
    """The request's features as (B, C, H, W) float32 with 1 <= B <= max_batch, or a ServiceError/TensorCodecError."""
    if request.model_id and request.model_id != limits.model_id:
        raise ModelNotFoundError(f"expected model_id {limits.model_id!r} (or empty), got {echo(request.model_id)}")
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequestError(
            f"expected a request_id of at most {MAX_REQUEST_ID_CHARS} characters, got {len(request.request_id)}"
        )
    if not request.HasField("features"):
        raise InvalidRequestError("expected a features tensor, got none")
    shape = list(request.features.shape)
    if shape and shape[0] > limits.max_batch:
        raise RequestTooLargeError(f"expected at most {limits.max_batch} samples per request, got {shape[0]}")
    features = decode_tensor(request.features, expected_shape=(-1, *limits.feature_shape), max_bytes=limits.max_bytes)
    batch = int(features.shape[0])
    if batch == 0:
        raise InvalidRequestError(
            f"expected at least one sample of shape {list(limits.feature_shape)}, got an empty batch"
        )
    if request.sample_ids:
        _check_sample_ids(list(request.sample_ids), batch)
    return features


def _check_sample_ids(sample_ids: list[str], batch: int) -> None:
    if len(sample_ids) != batch:
        raise InvalidRequestError(f"expected {batch} sample_ids (one per sample) or none, got {len(sample_ids)}")
    longest = max(len(s) for s in sample_ids)
    if longest > MAX_SAMPLE_ID_CHARS:
        raise InvalidRequestError(f"expected sample ids of at most {MAX_SAMPLE_ID_CHARS} characters, got {longest}")
    for sample_id in sample_ids:
        try:
            parse_sample_id(sample_id)
        except ConfigError as exc:
            raise InvalidRequestError(str(exc)) from exc
