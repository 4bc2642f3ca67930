"""Tensor codec: torch tensors to and from the wire's ``Tensor`` message.

The edge, the cloud and the tap all read features through ``decode_tensor``, so a
malformed payload is refused the same way everywhere, before any byte is
interpreted: dtype first, then shape, then the declared size against a limit,
then the byte count, then the values.

Layouts (little-endian, C order, see ``protos/cem_split.proto``):

- ``float32``: 4 bytes per value, exact.
- ``float16``: 2 bytes per value; features lie in (0, 1) plus noise, where the
  half-precision step (about 5e-4 near 1) is far below the noise σ. Unbounded
  features (no bottleneck, No_defense) keep float16's ~1e-3 relative precision;
  values beyond its range (65504) are refused, never silently turned into Inf.
- ``int8``: 1 byte per value, affine per tensor: ``value = scale * q + offset`` with
  ``q`` in [-128, 127]; the encoder spreads the tensor's [min, max] over the 256 levels,
  so any finite range round-trips to within scale/2, bounded features or not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cem.errors import TensorCodecError, TensorTooLargeError
from protos import cem_split_pb2 as pb

WIRE_DTYPES: tuple[str, ...] = ("float32", "float16", "int8")
MAX_RANK = 8

_ENUM_BY_NAME: dict[str, pb.DType] = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "int8": pb.INT8}
_NAME_BY_ENUM: dict[int, str] = {value: name for name, value in _ENUM_BY_NAME.items()}
_NUMPY_DTYPE: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
}


def dtype_to_enum(name: str) -> pb.DType:
    """``"float16"`` -> ``pb.FLOAT16``."""
    if name not in _ENUM_BY_NAME:
        raise TensorCodecError(f"expected a wire dtype in {WIRE_DTYPES}, got {name!r}")
    return _ENUM_BY_NAME[name]


def enum_to_dtype(value: int) -> str:
    """``pb.FLOAT16`` -> ``"float16"``; unknown or unspecified enum values are an error."""
    if value not in _NAME_BY_ENUM:
        known = ", ".join(f"{pb.DType.Name(v)}={v}" for v in _NAME_BY_ENUM)
        raise TensorCodecError(f"expected tensor dtype one of {known}, got {value}")
    return _NAME_BY_ENUM[value]


def bytes_per_value(name: str) -> int:
    """Wire bytes per feature value: 4, 2 or 1."""
    return _NUMPY_DTYPE[enum_to_dtype(dtype_to_enum(name))].itemsize


def encode_tensor(t: torch.Tensor, dtype: str = "float32") -> pb.Tensor:
    """Serialise a finite float tensor of any shape (an empty batch included) as ``dtype``."""
    return encode_array(t.detach().to("cpu", torch.float32).contiguous().numpy(), dtype)


def encode_array(array: np.ndarray, dtype: str = "float32") -> pb.Tensor:
    """``encode_tensor`` for a C-contiguous float32 array (what the cloud's logits already are)."""
    name = enum_to_dtype(dtype_to_enum(dtype))
    if not _all_finite(array):
        raise TensorCodecError("expected finite values to encode, got NaN or Inf")
    message = pb.Tensor(dtype=_ENUM_BY_NAME[name], shape=list(array.shape))
    if name == "int8":
        scale, offset = _int8_affine(array)
        quantised = np.clip(np.rint((array - offset) / scale), -128, 127).astype(np.int8)
        message.scale, message.offset = scale, offset
        message.data = quantised.tobytes()
        return message
    if name == "float16" and array.size:  # finite float32 values always fit float32; float16 stops at 65504
        limit = float(np.finfo(np.float16).max)
        peak = float(np.abs(array).max())
        if peak > limit:
            raise TensorCodecError(f"expected values within the {name} range (|v| <= {limit:.6g}), got {peak:.3g}")
    message.data = array.astype(_NUMPY_DTYPE[name], copy=False).tobytes()
    return message


def _all_finite(array: np.ndarray) -> bool:
    """True when no value is NaN or +-Inf, in one pass without a temporary for finite data.

    A NaN or an infinity makes the sum NaN or infinite, so a finite sum proves
    every value finite; only a non-finite sum (a bad value, or finite values whose
    float32 sum overflows) needs the value-by-value check.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(array.sum())
    return math.isfinite(total) or bool(np.isfinite(array).all())


def _int8_affine(array: np.ndarray) -> tuple[float, float]:
    """Scale and offset mapping [min, max] onto q in [-128, 127], exactly representable as float32."""
    if array.size == 0:
        return 1.0, 0.0
    low, high = float(array.min()), float(array.max())
    scale = float(np.float32((high - low) / 255.0)) if high > low else 1.0
    if scale == 0.0 or not math.isfinite(scale):
        scale = 1.0
    offset = float(np.float32(low + 128.0 * scale))
    return scale, offset


def decode_tensor(
    msg: pb.Tensor,
    *,
    expected_shape: tuple[int, ...] | None = None,
    max_bytes: int | None = None,
) -> torch.Tensor:
    """The float32 tensor a ``Tensor`` message carries, after validating every field.

    ``expected_shape`` may use ``-1`` for a free dimension (the batch, usually):
    ``(-1, 8, 8, 8)`` accepts any number of (8, 8, 8) samples. ``max_bytes`` bounds
    the declared payload size; exceeding it raises ``TensorTooLargeError``.
    Raises ``TensorCodecError`` with an "expected X, got Y" message otherwise.
    """
    name = enum_to_dtype(msg.dtype)
    shape = tuple(int(d) for d in msg.shape)
    _check_shape(shape, expected_shape)
    itemsize = _NUMPY_DTYPE[name].itemsize
    declared = math.prod(shape) * itemsize
    data = msg.data  # every read of a bytes field copies it out of the message: read it once
    if max_bytes is not None and (declared > max_bytes or len(data) > max_bytes):
        raise TensorTooLargeError(
            f"expected a tensor of at most {max_bytes} bytes, got shape {list(shape)} "
            f"({declared} bytes declared, {len(data)} sent)"
        )
    if len(data) != declared:
        raise TensorCodecError(
            f"expected {declared} bytes for {name} shape {list(shape)}, got {len(data)}"
        )
    values = np.frombuffer(data, dtype=_NUMPY_DTYPE[name])  # a view of the bytes, no copy
    scale, offset = float(msg.scale), float(msg.offset)
    if not (math.isfinite(scale) and math.isfinite(offset)):  # also where the dtype ignores them: a NaN there
        ignored = "" if name == "int8" else f" (even for {name}, which ignores them)"
        raise TensorCodecError(  # would be answered and then poison the auditor's capture store
            f"expected a finite scale and offset{ignored}, got scale {scale}, offset {offset}"
        )
    if name == "int8":
        if not scale > 0:
            raise TensorCodecError(f"expected an int8 scale > 0, got {scale}")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf, refused just below
            array = values.astype(np.float32) * np.float32(scale) + np.float32(offset)
    else:
        array = values.astype(np.float32)  # the one copy: torch gets a writable array it owns
    if not _all_finite(array):
        bad = int(array.size - np.isfinite(array).sum())
        raise TensorCodecError(f"expected finite values, got {bad} NaN or Inf of {array.size}")
    return torch.from_numpy(array.reshape(shape))


def _check_shape(shape: tuple[int, ...], expected: tuple[int, ...] | None) -> None:
    if len(shape) > MAX_RANK:
        raise TensorCodecError(f"expected a tensor of rank <= {MAX_RANK}, got rank {len(shape)}")
    if any(d < 0 for d in shape):
        raise TensorCodecError(f"expected non-negative dimensions, got shape {list(shape)}")
    if expected is None:
        return
    matches = len(shape) == len(expected) and all(e == -1 or e == d for d, e in zip(shape, expected, strict=True))
    if not matches:
        wanted = "(" + ", ".join("B" if e == -1 else str(e) for e in expected) + ")"
        raise TensorCodecError(f"expected shape {wanted}, got {list(shape)}")
