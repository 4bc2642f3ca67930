"""InferRequest bytes, well-formed and hostile: protobuf wire helpers, one case's random ``Draw``, the mutators.

A mutator takes a well-formed request and returns ``(variant, expected codes, bytes)``: NaN/Inf
data or headers, bad int8 scales, shapes, batches, lengths and dtypes (``VALUE_MUTATORS``), and
hostile model, request and sample ids or strings that are not UTF-8 (``ID_MUTATORS``). Pure: every
choice comes from the ``Draw``, so the same seed and index give the same bytes.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable

import numpy as np
import torch

from cem.codec import encode_tensor
from fuzzing.spec import CODE, INVALID, ONLY_OK, TOO_LARGE, Target
from protos import cem_split_pb2 as pb


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values as their 10-byte two's complement."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` with wire type 2; appended to a message it overrides (or adds) that field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def pad_to(payload: bytes, size: int) -> bytes:
    """``payload`` plus an unknown field 15 so that the result is exactly ``size`` bytes (a still-valid message)."""
    for length_bytes in range(1, 6):
        n = size - len(payload) - 1 - length_bytes
        if n >= 0 and len(varint(n)) == length_bytes:
            return payload + length_delimited(15, b"\0" * n)
    raise ValueError(f"cannot pad {len(payload)} bytes to exactly {size}")


class Draw:
    """The random choices of one case: ``rng`` for structure, numpy for bulk bytes, ids unique per case."""

    def __init__(self, target: Target, seed: int, index: int) -> None:
        self.target = target
        self.index = index
        self.rng = random.Random(f"{seed}:{index}")
        self.np = np.random.default_rng(self.rng.getrandbits(64))
        self._messages = 0

    def bytes(self, n: int) -> bytes:
        return self.np.integers(0, 256, size=n, dtype=np.uint8).tobytes()

    def request(self, batch: int | None = None, dtype: str | None = None) -> pb.InferRequest:
        """A well-formed request: (B, C, H, W) features in [0, 1), sample ids unique across the whole run."""
        j, self._messages = self._messages, self._messages + 1
        if batch is None:
            batch = self.rng.randint(1, self.target.max_batch) if self.rng.random() < 0.1 else self.rng.randint(1, 4)
        dtype = dtype or self.rng.choice(("float32", "float16", "int8"))
        features = torch.from_numpy(self.np.random((batch, *self.target.feature_shape), dtype=np.float32))
        return pb.InferRequest(
            model_id=self.target.model_id if self.rng.random() < 0.8 else "",
            request_id=f"fuzz-{self.index}-{j}",
            features=encode_tensor(features, dtype),
            sample_ids=[f"fuzz-{self.index}-{j}/test/{s}" for s in range(batch)],
        )

    def over_limit(self) -> int:
        """A size just above the message limit: +1 byte often, otherwise up to +64 KiB."""
        extra = (
            1
            if self.rng.random() < 0.3
            else self.rng.choice((self.rng.randint(2, 1024), self.rng.randint(1025, 65536)))
        )
        return self.target.max_message_bytes + extra


Mutator = Callable[[Draw, pb.InferRequest], tuple[str, frozenset, bytes]]
NONFINITE = (math.nan, math.inf, -math.inf)


def nonfinite_data(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    r.CopyFrom(d.request(dtype=d.rng.choice(("float32", "float16"))))
    value, wire = d.rng.choice(NONFINITE), r.features.data
    packed = struct.pack("<f", value) if r.features.dtype == pb.FLOAT32 else np.float16(value).tobytes()
    at = d.rng.randrange(0, len(wire), len(packed))
    r.features.data = wire[:at] + packed + wire[at + len(packed):]
    return f"data={value}/{pb.DType.Name(r.features.dtype)}", INVALID, r.SerializeToString()


def nonfinite_header(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    name, value = d.rng.choice(("scale", "offset")), d.rng.choice(NONFINITE)
    setattr(r.features, name, value)  # ignored by float32/float16, yet a NaN there once poisoned the capture store
    return f"{name}={value}/{pb.DType.Name(r.features.dtype)}", INVALID, r.SerializeToString()


def bad_int8_scale(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    r.CopyFrom(d.request(dtype="int8"))
    r.features.scale = d.rng.choice((0.0, -0.0, -1.0, 3e38))
    r.features.data = b"\x7f" + r.features.data[1:]  # q = 127: 127 * 3e38 overflows float32 to Inf
    return f"int8 scale={r.features.scale}", INVALID, r.SerializeToString()


def bad_shape(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    b, (c, h, w) = r.features.shape[0], d.target.feature_shape
    shapes = {
        "no batch dim": [c, h, w], "rank 5": [b, c, h, w, 1], "rank 9": [1] * 9, "rank 300": [1] * 300, "rank 0": [],
        "wrong C": [b, c + 1, h, w], "wrong W": [b, c, h, w - 1], "flattened": [b, 1, 1, c * h * w],
        "negative batch": [-1, c, h, w], "negative C": [b, -c, h, w], "int64 min": [b, c, -(2 ** 63), w],
        "huge C": [b, 2 ** 62, h, w], "empty batch": [0, c, h, w],
    }
    name = d.rng.choice(sorted(shapes))
    r.features.ClearField("shape")
    r.features.shape.extend(shapes[name])
    if name == "empty batch":
        r.features.data = b""
    return name, INVALID, r.SerializeToString()


def big_batch(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    """More samples than --max-batch: refused from the declared shape, before any byte is read."""
    batch = d.rng.choice((d.target.max_batch + 1, 2 * d.target.max_batch, 2 ** 31, 2 ** 62, 2 ** 63 - 1))
    r.features.shape[0] = batch
    return f"batch={batch}", TOO_LARGE, r.SerializeToString()


def length_mismatch(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    data = r.features.data
    options = {"+1 byte": data + b"\0", "-1 byte": data[:-1], "empty": b"", "doubled": data + data}
    name = d.rng.choice(sorted(options))
    r.features.data = options[name]
    return name, INVALID, r.SerializeToString()


def bad_dtype(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    r.features.dtype = d.rng.choice((0, 4, 99, 2 ** 31 - 1, -1, -(2 ** 31)))  # proto3 enums are open: any int32 parses
    return f"dtype={r.features.dtype}", INVALID, r.SerializeToString()


def no_features(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    r.ClearField("features")
    return "no features", INVALID, r.SerializeToString()


def wrong_model_id(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    model = d.target.model_id
    options = {"other": "other-model", "suffix": model + "x", "nul": model + "\0", "space": " " + model,
               "unicode": "模型-ü-\U0001F642", "bidi": "\u202egnp.exe", "control": "\x1b[2J\r\n\x07",
               "long": "m" * d.rng.randint(1000, 100_000)}
    name = d.rng.choice(sorted(options))
    r.model_id = options[name]
    return name, frozenset({CODE.NOT_FOUND}), r.SerializeToString()


def hostile_request_id(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    if d.rng.random() < 0.5:
        r.request_id = "r" * d.rng.randint(129, 50_000)
        return "request_id too long", INVALID, r.SerializeToString()
    r.request_id = d.rng.choice(("\x00\x1b[31m\n", "\u202e\u200b", "²١１", "../../etc/passwd")) + r.request_id
    return "odd request_id (answered)", ONLY_OK, r.SerializeToString()  # any string of <= 128 chars is allowed


HOSTILE_SAMPLE_IDS = (
    "{ds}/test/²", "{ds}/test/١٢", "{ds}/test/１", "{ds}/test/01", "{ds}/test/12345678901", "{ds}/test/-1",
    "{ds}/TEST/1", "{ds}/test/1\n", "{ds}/test/1 ", "{ds}/test/", "{ds}", "", "\0", "../../../etc/passwd",
    "{ds}/test/../../x", "ｆｕｚｚ/test/1", "{ds}/test/1\x00", "{long}/test/1",
)


def hostile_sample_ids(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    dataset = r.sample_ids[0].split("/")[0]
    choice = d.rng.randrange(len(HOSTILE_SAMPLE_IDS) + 3)
    if choice == len(HOSTILE_SAMPLE_IDS):
        r.sample_ids.append(f"{dataset}/test/999")
        return "one id too many", INVALID, r.SerializeToString()
    if choice == len(HOSTILE_SAMPLE_IDS) + 1:
        r.sample_ids.extend(["a/test/1"] * 10_000)
        return "10,000 extra ids", INVALID, r.SerializeToString()
    if choice == len(HOSTILE_SAMPLE_IDS) + 2:
        r.sample_ids[0] = "x" * d.rng.randint(257, 60_000)
        return "id too long", INVALID, r.SerializeToString()
    template = HOSTILE_SAMPLE_IDS[choice]
    r.sample_ids[d.rng.randrange(len(r.sample_ids))] = template.format(ds=dataset, long="d" * 65)
    return f"sample id {template!r}", INVALID, r.SerializeToString()


def invalid_utf8(d: Draw, r: pb.InferRequest) -> tuple[str, frozenset, bytes]:
    """A string field whose bytes are not UTF-8: only the wire can carry it; the parser must refuse it."""
    number, name = d.rng.choice(((1, "model_id"), (2, "request_id"), (4, "sample_ids")))
    junk = d.rng.choice((b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"ok\x80"))
    return f"{name} not UTF-8", INVALID, r.SerializeToString() + length_delimited(number, junk)


VALUE_MUTATORS: tuple[Mutator, ...] = (nonfinite_data, nonfinite_header, bad_int8_scale, bad_shape, big_batch,
                                       length_mismatch, bad_dtype, no_features)
ID_MUTATORS: tuple[Mutator, ...] = (wrong_model_id, hostile_request_id, hostile_sample_ids, invalid_utf8)


def hostile_payload(d: Draw, mutators: tuple[Mutator, ...]) -> tuple[str, frozenset, bytes]:
    mutate = d.rng.choice(mutators)
    variant, expected, payload = mutate(d, d.request(batch=d.rng.randint(1, 4)))
    return f"{mutate.__name__}: {variant}", expected, payload
