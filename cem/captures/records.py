"""What the tap keeps of one intercepted request, and how it reads it off the wire.

The proxy forwards the raw request bytes untouched; a *copy* of those bytes is
parsed here, on the recorder's writer thread, so parsing never delays traffic.
Only ``InferRequest`` messages carry features; everything else (model info,
health checks) is forwarded but not recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cem.errors import InvalidCaptureError
from protos import cem_split_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["SplitInference"]
SERVICE_PREFIX = f"/{SERVICE.full_name}/"
# Every method whose requests are InferRequest messages, i.e. carry a feature tensor.
CAPTURED_METHODS = frozenset(
    SERVICE_PREFIX + method.name
    for method in SERVICE.methods
    if method.input_type.full_name == pb.InferRequest.DESCRIPTOR.full_name
)


@dataclass(frozen=True)
class CaptureRecord:
    """One intercepted feature batch exactly as it crossed the wire.

    ``data`` is the Tensor's raw little-endian payload in its wire ``dtype``
    ("float32" | "float16" | "int8", with ``scale``/``offset`` for int8), so
    a reader decodes it with the same codec the cloud uses.
    """

    captured_at: float
    method: str
    model_id: str
    request_id: str
    dtype: str
    shape: tuple[int, ...]
    scale: float
    offset: float
    sample_ids: tuple[str, ...]
    data: bytes

    @property
    def batch(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    def to_header(self) -> dict[str, object]:
        """JSON-safe metadata (everything but the payload) for shard headers and the index."""
        return {
            "captured_at": self.captured_at,
            "method": self.method,
            "model_id": self.model_id,
            "request_id": self.request_id,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            "offset": self.offset,
            "sample_ids": list(self.sample_ids),
            "nbytes": len(self.data),
        }

    @classmethod
    def from_header(cls, header: dict[str, Any], data: bytes) -> CaptureRecord:
        """The record a JSON header (``to_header``'s output, read back) and its payload describe."""
        return cls(
            captured_at=float(header["captured_at"]),
            method=str(header["method"]),
            model_id=str(header["model_id"]),
            request_id=str(header["request_id"]),
            dtype=str(header["dtype"]),
            shape=tuple(int(d) for d in header["shape"]),
            scale=float(header["scale"]),
            offset=float(header["offset"]),
            sample_ids=tuple(str(s) for s in header["sample_ids"]),
            data=data,
        )


def name_dtype(value: int) -> str:
    """Wire enum value -> "float32" | "float16" | "int8" (or "unknown(<n>)" for a value we do not know)."""
    try:
        return pb.DType.Name(value).lower()
    except ValueError:
        return f"unknown({value})"


def parse_capture(
    method: str, payload: bytes, captured_at: float, response: bytes | None = None
) -> CaptureRecord | None:
    """Parse an intercepted request; None when it is not a feature-carrying InferRequest.

    ``response`` is the upstream's answer to it, when the tap has one: an empty
    ``model_id`` (the cloud's "whichever model you serve") and an empty
    ``request_id`` are then filled from it, so the capture is filed under the
    model that actually answered and every capture has an id.

    Raises google.protobuf.message.DecodeError for bytes that are not a valid protobuf message, and
    ``InvalidCaptureError`` for a tensor header no index can hold (a NaN/Inf scale or offset). The
    cloud refuses both, and the recorder counts them instead of storing them, so one hostile
    request can never make the store reject the batch of honest captures it was written with.
    """
    if method not in CAPTURED_METHODS:
        return None
    request = pb.InferRequest()
    request.ParseFromString(payload)
    if not request.HasField("features"):
        return None
    tensor = request.features
    if not (math.isfinite(tensor.scale) and math.isfinite(tensor.offset)):
        raise InvalidCaptureError(f"expected finite scale and offset, got {tensor.scale}, {tensor.offset}")
    model_id, request_id = request.model_id, request.request_id
    if response is not None and not (model_id and request_id):
        answer = pb.InferResponse.FromString(response)
        model_id, request_id = model_id or answer.model_id, request_id or answer.request_id
    return CaptureRecord(
        captured_at=captured_at,
        method=method,
        model_id=model_id,
        request_id=request_id,
        dtype=name_dtype(tensor.dtype),
        shape=tuple(int(d) for d in tensor.shape),
        scale=float(tensor.scale),
        offset=float(tensor.offset),
        sample_ids=tuple(request.sample_ids),
        data=bytes(tensor.data),
    )


__all__ = ["CAPTURED_METHODS", "CaptureRecord", "name_dtype", "parse_capture"]
