"""cem.codec: round trips over dtypes and shapes, and refusal of malformed payloads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cem.codec import (
    WIRE_DTYPES,
    bytes_per_value,
    decode_tensor,
    dtype_to_enum,
    encode_tensor,
    enum_to_dtype,
)
from cem.errors import TensorCodecError, TensorTooLargeError
from protos import cem_split_pb2 as pb

SHAPES = [(0, 8, 8, 8), (1, 8, 8, 8), (5, 8, 4, 4), (3, 10), (7,), ()]
# Worst-case absolute error for values in [0, 1]: half a float16 step at 1, half an int8 level over [0, 1].
TOLERANCE = {"float32": 0.0, "float16": 2.0**-11, "int8": 0.5 / 255 + 1e-6}


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_preserves_shape_and_values_within_the_dtype_step(dtype: str, shape: tuple[int, ...]) -> None:
    t = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    msg = encode_tensor(t, dtype)
    assert len(msg.data) == math.prod(shape) * bytes_per_value(dtype)
    expected_shape = tuple(-1 if i == 0 else d for i, d in enumerate(shape)) or None
    out = decode_tensor(pb.Tensor.FromString(msg.SerializeToString()), expected_shape=expected_shape)
    assert out.dtype == torch.float32 and tuple(out.shape) == shape
    if t.numel():
        assert (out - t).abs().max().item() <= TOLERANCE[dtype]


def test_float32_is_bit_exact_and_little_endian() -> None:
    t = torch.tensor([[1.0, -2.5, 3.25e-8]])
    msg = encode_tensor(t, "float32")
    assert msg.data == np.array([1.0, -2.5, 3.25e-8], dtype="<f4").tobytes()
    assert torch.equal(decode_tensor(msg), t)


def test_int8_spreads_min_and_max_over_the_full_range() -> None:
    t = torch.tensor([-1.0, 0.0, 3.0])
    msg = encode_tensor(t, "int8")
    q = np.frombuffer(msg.data, dtype=np.int8)
    assert q.min() == -128 and q.max() == 127
    assert torch.allclose(decode_tensor(msg), t, atol=msg.scale / 2 + 1e-6)


def test_constant_tensor_survives_int8() -> None:
    t = torch.full((2, 3), 0.25)
    assert torch.allclose(decode_tensor(encode_tensor(t, "int8")), t)


def test_dtype_names_and_enums_are_symmetric() -> None:
    for name in WIRE_DTYPES:
        assert enum_to_dtype(dtype_to_enum(name)) == name


def _valid(shape: tuple[int, ...] = (2, 8, 8, 8), dtype: str = "float32") -> pb.Tensor:
    return encode_tensor(torch.rand(shape), dtype)


def _with(msg: pb.Tensor, **fields: object) -> pb.Tensor:
    out = pb.Tensor()
    out.CopyFrom(msg)
    for name, value in fields.items():
        if name == "shape":
            del out.shape[:]
            out.shape.extend(value)  # type: ignore[arg-type]
        else:
            setattr(out, name, value)
    return out


def _nan_float16() -> pb.Tensor:
    msg = _valid((1, 4), "float16")
    data = bytearray(msg.data)
    data[2:4] = np.array([np.inf], dtype="<f2").tobytes()
    return _with(msg, data=bytes(data))


MALFORMED = {
    "unspecified dtype": (_with(_valid(), dtype=0), "expected tensor dtype"),
    "unknown dtype": (_with(_valid(), dtype=42), "got 42"),
    "negative dimension": (_with(_valid(), shape=[-2, 8, 8, 8]), "non-negative"),
    "too many bytes": (_with(_valid(), data=_valid().data + b"\0"), "expected 4096 bytes"),
    "too few bytes": (_with(_valid(), data=_valid().data[:-4]), "got 4092"),
    "absurd shape, few bytes": (_with(_valid(), shape=[1, 8, 8, 2**40]), "expected shape (B, 8, 8, 8)"),
    "wrong feature shape": (_with(_valid(), shape=[4, 8, 8, 4]), "expected shape (B, 8, 8, 8)"),
    "wrong rank": (_with(_valid(), shape=[2, 512, 8]), "expected shape (B, 8, 8, 8)"),
    "NaN in float32": (_with(_valid(), data=np.full(2 * 512, np.nan, dtype="<f4").tobytes()), "expected finite values"),
    "Inf in float16": (_nan_float16(), "expected finite values"),
    "int8 zero scale": (_with(_valid(dtype="int8"), scale=0.0), "int8 scale"),
    "int8 NaN offset": (_with(_valid(dtype="int8"), offset=float("nan")), "finite scale and offset"),
    "float32 NaN scale (ignored field)": (_with(_valid(), scale=float("nan")), "even for float32, which ignores them"),
    "float16 Inf offset (ignored field)": (
        _with(_valid(dtype="float16"), offset=float("inf")), "finite scale and offset"
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_payloads_are_refused_with_a_readable_message(case: str) -> None:
    msg, text = MALFORMED[case]
    expected = (-1, 8, 8, 8) if msg.dtype != pb.FLOAT16 else None
    with pytest.raises(TensorCodecError) as info:
        decode_tensor(msg, expected_shape=expected)
    assert text in str(info.value)


def test_absurd_shape_without_an_expected_shape_fails_on_the_byte_count() -> None:
    message = r"expected \d+ bytes for float32 shape \[1099511627776, 1099511627776\], got 8"
    with pytest.raises(TensorCodecError, match=message):
        decode_tensor(pb.Tensor(dtype=pb.FLOAT32, shape=[2**40, 2**40], data=b"\0" * 8))


def test_rank_above_the_limit_is_refused() -> None:
    with pytest.raises(TensorCodecError, match="rank"):
        decode_tensor(pb.Tensor(dtype=pb.FLOAT32, shape=[1] * 9, data=b"\0" * 4))


def test_declared_size_over_the_limit_is_too_large_before_bytes_are_read() -> None:
    msg = pb.Tensor(dtype=pb.FLOAT32, shape=[2**20, 8, 8, 8], data=b"")
    with pytest.raises(TensorTooLargeError, match="at most 1024 bytes"):
        decode_tensor(msg, expected_shape=(-1, 8, 8, 8), max_bytes=1024)


def test_encoder_refuses_non_finite_values_and_float16_overflow_and_unknown_dtypes() -> None:
    with pytest.raises(TensorCodecError, match="finite"):
        encode_tensor(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TensorCodecError, match="float16 range"):
        encode_tensor(torch.tensor([1e6]), "float16")
    with pytest.raises(TensorCodecError, match="expected a wire dtype"):
        encode_tensor(torch.zeros(2), "bfloat16")


def test_finite_values_whose_sum_overflows_still_round_trip_and_one_nan_among_them_is_refused() -> None:
    """The finiteness check sums first; a float32 sum that overflows must not refuse finite data."""
    big = torch.full((4, 4), 3e38)  # finite, but the float32 sum is Inf
    assert torch.equal(decode_tensor(encode_tensor(big)), big)
    message = encode_tensor(big)
    values = np.frombuffer(message.data, dtype="<f4").copy()
    values[5] = np.nan
    message.data = values.tobytes()
    with pytest.raises(TensorCodecError, match="expected finite values, got 1 NaN or Inf of 16"):
        decode_tensor(message)
    big[1, 1] = float("inf")
    with pytest.raises(TensorCodecError, match="expected finite values to encode"):
        encode_tensor(big)
