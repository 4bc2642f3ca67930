"""Seeded fuzzing of ``cem-cloud`` and ``cem-tap``: hostile traffic, direct and through the tap.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_services.py --messages 10000 --seed 1

Every byte a caller sends is untrusted, and the tap sits in front of the cloud
for every request. So this module starts a real ``cem-cloud`` and a real
``cem-tap`` (child processes on 127.0.0.1 port 0, so that /proc/<pid>/status
gives each one's RSS) and sends every generated case on both paths, direct to
the cloud and through the tap, as raw bytes over grpc's generic multicallables
so that nothing on the client side refuses to send them. By default every case
is sent twice (``--passes 2``): the first pass is the warm-up, and RSS growth
is judged over the second, which repeats exactly what the allocators have
already seen (docs/fuzz.md explains why a fresh-traffic baseline is not flat).

Message classes (``CLASS_WEIGHTS``): well-formed requests (``valid``); random
bytes; protobuf-shaped random fields; mutated (truncated, bit-flipped,
spliced) valid messages; well-formed messages with hostile tensor values
(NaN/Inf, bad shapes, dtypes, lengths, batches) or hostile ids (model,
request, sample ids); messages just above (and exactly at) the message limit;
unknown methods and wrong call shapes; streams mixing good and bad messages.
Each case is built from its own ``random.Random(f"{seed}:{index}")``, so
``--seed S --case K`` replays one case alone.

What ``FuzzReport.problems`` lists, by check (``CHECKS``; tests/fuzz asserts
each is empty): any UNKNOWN or INTERNAL; any status outside the case's
expected set (valid requests must be OK; a call still open at its 5 s deadline
has hung); a different status or response count through the tap than direct;
RSS growth of either process after warm-up beyond the tolerance; health not
SERVING or a valid request not answered afterwards; an answered valid request
(found by its unique sample ids) missing from the capture store once the tap
has exited; a non-zero exit after SIGTERM. ``tests/fuzz`` runs a bounded
version; ``docs/fuzz.md`` records a long run and what the fuzz found.

Sections: cases (pure: the generator), calls, processes, the run, the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2

from attacker.tap.reader import CaptureStore
from cem.codec import decode_tensor, encode_tensor
from cem.wire import SERVICE_NAME, parse_listening_line
from protos import cem_split_pb2 as pb

CODE = grpc.StatusCode
INFER, STREAM, MODEL_INFO = (f"/{SERVICE_NAME}/{name}" for name in ("Infer", "InferStream", "GetModelInfo"))
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
CLIENT_FAULTS = frozenset({CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, CODE.RESOURCE_EXHAUSTED, CODE.UNIMPLEMENTED,
                           CODE.OUT_OF_RANGE, CODE.FAILED_PRECONDITION})
NEVER = frozenset({CODE.UNKNOWN, CODE.INTERNAL})  # a client fault must never look like a server fault
ONLY_OK = frozenset({CODE.OK})
INVALID = frozenset({CODE.INVALID_ARGUMENT})
TOO_LARGE = frozenset({CODE.RESOURCE_EXHAUSTED})
MAYBE_OK = CLIENT_FAULTS | ONLY_OK  # mutations may happen to produce a valid request
CALL_TIMEOUT_S = 5.0  # valid calls take milliseconds; a call still open after this has hung
HUNG_LIMIT = 2  # a variant that hung this often on a path is not sent there again (reported, not re-timed)
PATHS = ("direct", "tap")
# The checks a problem can fail, one per property the fuzz asserts.
FORBIDDEN, STATUS, PARITY, MEMORY, AFTER, CAPTURE, EXIT = (
    "forbidden status", "unexpected status", "tap differs", "memory", "after the run", "capture", "exit")
CHECKS = (FORBIDDEN, STATUS, PARITY, MEMORY, AFTER, CAPTURE, EXIT)


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Target:
    """What the generator must know about the service to build valid (and just-invalid) messages."""

    model_id: str
    feature_shape: tuple[int, int, int]  # (C, H, W)
    max_batch: int
    max_message_bytes: int


@dataclass(frozen=True)
class Case:
    """One call: ``payloads`` sent to ``method`` (one message unless ``streaming``).

    ``valid`` are the positions of well-formed InferRequests (unique sample ids); through the tap,
    each one answered must end up in the capture store. ``must_answer`` valid messages lead the
    stream, so they must be answered whatever comes after them.
    """

    index: int
    kind: str
    variant: str
    method: str
    streaming: bool
    payloads: tuple[bytes, ...]
    expected: frozenset[grpc.StatusCode]
    valid: tuple[int, ...] = ()
    must_answer: int = 0
    oversized: bool = False  # a message over the limit: gRPC itself fails the call when it arrives

    def describe(self) -> str:
        shape = "stream" if self.streaming else "unary"
        sizes = ",".join(str(len(p)) for p in self.payloads)
        return f"case {self.index} {self.kind} {shape} {self.method[:60]} bytes=[{sizes}]"


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
        extra = 1 if self.rng.random() < 0.3 else self.rng.choice((self.rng.randint(2, 1024), self.rng.randint(1025, 65536)))
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


def build_valid(d: Draw) -> Case:
    request = d.request()
    if d.rng.random() < 0.5:
        payload, variant = request.SerializeToString(), f"{pb.DType.Name(request.features.dtype)} B={request.features.shape[0]}"
    else:  # fields a newer client might add must not hurt: unknown fields are skipped
        payload, variant = request.SerializeToString() + length_delimited(99, d.bytes(16)), "with unknown field"
    if d.rng.random() < 0.5:
        return Case(d.index, "valid", variant, INFER, False, (payload,), ONLY_OK, valid=(0,), must_answer=1)
    return Case(d.index, "valid", variant, STREAM, True, (payload,), ONLY_OK, valid=(0,), must_answer=1)


def build_random_bytes(d: Draw) -> Case:
    size = d.rng.choice((d.rng.randint(0, 16), d.rng.randint(17, 512), d.rng.randint(513, 16384)))
    method = d.rng.choice((INFER, INFER, MODEL_INFO, STREAM))
    if method == MODEL_INFO:  # unknown fields and an empty message are a valid ModelInfoRequest
        return Case(d.index, "random_bytes", "GetModelInfo", method, False, (d.bytes(size),), INVALID | ONLY_OK)
    if method == STREAM:
        payloads = tuple(d.bytes(d.rng.randint(1, 512)) for _ in range(d.rng.randint(1, 3)))
        return Case(d.index, "random_bytes", "InferStream", method, True, payloads, CLIENT_FAULTS)
    return Case(d.index, "random_bytes", f"Infer {size // 512 * 512}+ bytes", method, False, (d.bytes(size),), CLIENT_FAULTS)


def random_field(d: Draw, number: int, depth: int) -> bytes:
    """One field with a random (often wrong) wire type; field 3 sometimes nests a random Tensor."""
    wire_type = d.rng.choice((0, 1, 2, 5))
    if wire_type == 0:
        return varint(number << 3) + varint(d.rng.choice((0, 1, 8, 2 ** 31, 2 ** 63, -1, d.rng.getrandbits(64))))
    if wire_type == 1:
        return varint(number << 3 | 1) + d.bytes(8)
    if wire_type == 5:
        return varint(number << 3 | 5) + struct.pack("<f", d.rng.choice(NONFINITE + (0.0, 1.0, 3e38)))
    if depth == 0 and number == 3:
        return length_delimited(3, random_message(d, depth + 1, 5))
    if number == 2 and depth == 1:  # packed shape: often the right rank, sometimes the right dims
        dims = [d.rng.choice((0, 1, 8, -1, 2 ** 40)) for _ in range(d.rng.randint(0, 6))]
        return length_delimited(2, b"".join(varint(v) for v in dims))
    return length_delimited(number, d.bytes(d.rng.choice((0, 3, 64, 2048))))


def random_message(d: Draw, depth: int = 0, fields: int = 4) -> bytes:
    numbers = [d.rng.randint(1, fields) if d.rng.random() < 0.9 else d.rng.randint(1, 2 ** 29 - 1)
               for _ in range(d.rng.randint(0, 8))]
    return b"".join(random_field(d, n, depth) for n in numbers)


def build_random_fields(d: Draw) -> Case:
    return Case(d.index, "random_fields", "InferRequest-shaped", INFER, False, (random_message(d),), MAYBE_OK)


def build_mutated(d: Draw) -> Case:
    data = bytearray(d.request().SerializeToString())
    how = d.rng.choice(("truncate", "bit flips", "insert", "delete", "splice"))
    if how == "truncate":
        data = data[: d.rng.randrange(len(data))]
    elif how == "bit flips":
        for _ in range(d.rng.randint(1, 8)):
            data[d.rng.randrange(len(data))] ^= 1 << d.rng.randrange(8)
    elif how == "insert":
        at = d.rng.randrange(len(data) + 1)
        data[at:at] = d.bytes(d.rng.randint(1, 16))
    elif how == "delete":
        at = d.rng.randrange(len(data))
        del data[at: at + d.rng.randint(1, 16)]
    else:
        other = d.request().SerializeToString()
        data = data[: d.rng.randrange(len(data))] + other[d.rng.randrange(len(other)):]
    return Case(d.index, "mutated", how, INFER, False, (bytes(data),), MAYBE_OK)


def build_hostile_values(d: Draw) -> Case:
    variant, expected, payload = hostile_payload(d, VALUE_MUTATORS)
    return Case(d.index, "hostile_values", variant, INFER, False, (payload,), expected,
                valid=(0,) if expected == ONLY_OK else ())


def build_hostile_ids(d: Draw) -> Case:
    variant, expected, payload = hostile_payload(d, ID_MUTATORS)
    valid = (0,) if expected == ONLY_OK else ()
    return Case(d.index, "hostile_ids", variant, INFER, False, (payload,), expected, valid=valid, must_answer=len(valid))


def build_oversized(d: Draw) -> Case:
    how = d.rng.choice(("valid padded", "random bytes", "GetModelInfo", "second in stream", "exactly at limit"))
    size, valid = d.over_limit(), d.request().SerializeToString()
    if how == "exactly at limit":  # the boundary: a message of exactly --max-message-bytes is accepted
        payload = pad_to(valid, d.target.max_message_bytes)
        return Case(d.index, "oversized", how, INFER, False, (payload,), ONLY_OK, valid=(0,), must_answer=1)
    if how == "second in stream":
        # gRPC fails the whole call when a message is over the limit, so an answer to the first one
        # is not guaranteed: a reader that reads ahead (the tap) fails before the answer arrives.
        payloads = (valid, pad_to(d.request().SerializeToString(), size))
        return Case(d.index, "oversized", how, STREAM, True, payloads, TOO_LARGE, valid=(0,), oversized=True)
    payload = d.bytes(size) if how == "random bytes" else pad_to(valid, size)
    method = MODEL_INFO if how == "GetModelInfo" else INFER
    variant = f"{how} +{size - d.target.max_message_bytes} B"
    return Case(d.index, "oversized", variant, method, False, (payload,), TOO_LARGE, oversized=True)


UNKNOWN_METHODS = (f"/{SERVICE_NAME}/Nope", f"/{SERVICE_NAME}/infer", "/cem.split.v1.Other/Infer",
                   "/grpc.health.v1.Health/Nope", "/x", "/" + "m" * 4000, f"/{SERVICE_NAME}/Infer/extra")


def build_methods(d: Draw) -> Case:
    """Methods nobody serves (fixed and never-seen names), and unary methods sent 0 or 2 messages."""
    payload = d.request().SerializeToString()
    how = d.rng.choice(("unknown unary", "unknown stream", "new name", "Infer with 0 messages",
                        "GetModelInfo with 0 messages", "Infer with 2 messages"))
    if how == "new name":  # a name no one sent before: whatever a proxy keeps per method name, it keeps again
        method = f"/fuzz.n{d.index}/" + "m" * d.rng.randint(1, 2000)
        return Case(d.index, "methods", how, method, d.rng.random() < 0.5, (payload,), frozenset({CODE.UNIMPLEMENTED}))
    if how.startswith("unknown"):
        method, streaming = d.rng.choice(UNKNOWN_METHODS), how.endswith("stream")
        payloads = (payload,) * (d.rng.randint(0, 3) if streaming else 1)
        return Case(d.index, "methods", f"{how} {method[:40]}", method, streaming, payloads, frozenset({CODE.UNIMPLEMENTED}))
    if how.endswith("with 0 messages"):  # grpcio: '"<method>" requires exactly one request message.'
        method = INFER if how.startswith("Infer") else MODEL_INFO
        return Case(d.index, "methods", how, method, True, (), frozenset({CODE.UNIMPLEMENTED}))
    return Case(d.index, "methods", how, INFER, True, (payload, payload), MAYBE_OK)


def build_mixed_stream(d: Draw) -> Case:
    """2-6 messages on one InferStream, each valid or hostile; the first refused one ends the stream."""
    payloads: list[bytes] = []
    valid: list[int] = []
    expected: set[grpc.StatusCode] = set()
    all_may_pass, leading = True, None
    for position in range(d.rng.randint(2, 6)):
        if d.rng.random() < 0.6:
            valid.append(position)
            payloads.append(d.request().SerializeToString())
            continue
        leading = position if leading is None else leading
        if d.rng.random() < 0.85:
            _, allowed, payload = hostile_payload(d, VALUE_MUTATORS + ID_MUTATORS)
        else:
            allowed, payload = CLIENT_FAULTS, d.bytes(d.rng.randint(1, 256))
        payloads.append(payload)
        expected |= allowed - ONLY_OK
        all_may_pass = all_may_pass and CODE.OK in allowed
    if all_may_pass:
        expected.add(CODE.OK)
    must_answer = len(payloads) if leading is None else leading
    variant = "all valid" if leading is None else f"{len(valid)} valid of {len(payloads)}"
    return Case(d.index, "mixed_stream", variant, STREAM, True, tuple(payloads), frozenset(expected),
                valid=tuple(valid), must_answer=must_answer)


CLASS_WEIGHTS: dict[str, tuple[Callable[[Draw], Case], float]] = {
    "valid": (build_valid, 0.16), "random_bytes": (build_random_bytes, 0.12), "random_fields": (build_random_fields, 0.08),
    "mutated": (build_mutated, 0.12), "hostile_values": (build_hostile_values, 0.16), "hostile_ids": (build_hostile_ids, 0.12),
    "oversized": (build_oversized, 0.06), "methods": (build_methods, 0.06), "mixed_stream": (build_mixed_stream, 0.12),
}


def make_case(target: Target, seed: int, index: int, classes: tuple[str, ...] = tuple(CLASS_WEIGHTS)) -> Case:
    """Case ``index`` of run ``seed``; independent of every other case, so it can be replayed alone."""
    d = Draw(target, seed, index)
    kind = d.rng.choices(classes, weights=[CLASS_WEIGHTS[n][1] for n in classes])[0]
    return CLASS_WEIGHTS[kind][0](d)


# ----------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    answered: tuple[str, ...]  # request ids of the responses, in order


class Caller:
    """Sends raw bytes to one address; no serializer on either side, so any bytes go out as they are."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)  # default send limit: unlimited; the server enforces its own

    def call(self, case: Case) -> Outcome:
        responses: list[bytes] = []
        try:
            if case.streaming:
                for response in self.channel.stream_stream(case.method)(iter(case.payloads), timeout=CALL_TIMEOUT_S):
                    responses.append(response)
            else:
                responses.append(self.channel.unary_unary(case.method)(case.payloads[0], timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as error:
            return Outcome(error.code(), error.details() or "", request_ids(case.method, responses))
        return Outcome(CODE.OK, "", request_ids(case.method, responses))

    def close(self) -> None:
        self.channel.close()


def request_ids(method: str, responses: list[bytes]) -> tuple[str, ...]:
    if method not in (INFER, STREAM):
        return tuple("" for _ in responses)
    return tuple(pb.InferResponse.FromString(r).request_id for r in responses)


def check_outcome(case: Case, outcome: Outcome) -> tuple[str, str] | None:
    """(check, why) when ``outcome`` is wrong for ``case``, else None."""
    if outcome.code in NEVER:
        return FORBIDDEN, f"{outcome.code.name} for a client fault: {outcome.details[:200]!r}"
    if outcome.code not in case.expected:
        wanted = "|".join(sorted(c.name for c in case.expected))
        return STATUS, f"expected {wanted}, got {outcome.code.name}: {outcome.details[:200]!r}"
    if len(outcome.answered) < case.must_answer:
        return STATUS, f"expected at least {case.must_answer} response(s), got {len(outcome.answered)}"
    return None


# ----------------------------------------------------------------------------- processes


@dataclass
class Service:
    """A child process that printed ``LISTENING host:port``."""

    name: str
    process: subprocess.Popen
    address: str
    log: Path

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

    def stop(self, timeout_s: float = 60.0) -> tuple[int, str]:
        """SIGTERM (the graceful path: the tap writes every queued capture), wait; (exit code, stdout rest)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return self.process.returncode, out or ""


def start_service(name: str, argv: list[str], log: Path, env: dict[str, str], timeout_s: float = 120.0) -> Service:
    with open(log, "w") as handle:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle, stdin=subprocess.DEVNULL, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if selector.select(timeout=0.5):
            parsed = parse_listening_line(process.stdout.readline())
            if parsed is not None:
                selector.close()
                return Service(name, process, f"{parsed[0]}:{parsed[1]}", log)
    process.kill()
    raise RuntimeError(f"{name} did not print LISTENING; log:\n{log.read_text()[-4000:]}")


def service_env(malloc_arena_max: int | None) -> dict[str, str]:
    """Child environment: one OpenMP thread, and optionally fewer glibc malloc arenas.

    glibc gives threads that allocate at the same time arenas of their own (up to 8 per core), so
    under fresh traffic RSS keeps climbing, bounded, until every arena has seen the largest
    messages; ``MALLOC_ARENA_MAX=2`` makes that curve settle sooner (docs/fuzz.md). The default
    run leaves glibc's setting alone and replays its warm-up instead.
    """
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if malloc_arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(malloc_arena_max)
    return env


def start_cloud(bundle: Path, target: Target, work: Path, env: dict[str, str]) -> Service:
    return start_service("cloud", [
        sys.executable, "-m", "cloud_server.cli", "--bundle", str(bundle), "--port", "0", "--device", "cpu",
        "--max-batch", str(target.max_batch), "--max-message-bytes", str(target.max_message_bytes),
        "--max-delay-ms", "0", "--workers", "8", "--drain-s", "0.1", "--log-level", "WARNING"], work / "cloud.log", env)


def start_tap(upstream: str, target: Target, work: Path, env: dict[str, str]) -> Service:
    return start_service("tap", [
        sys.executable, "-m", "attacker.tap.cli", "--listen", "127.0.0.1:0", "--upstream", upstream,
        "--captures", str(work / "captures"), "--max-message-bytes", str(target.max_message_bytes),
        "--log-level", "WARNING", "--json"], work / "tap.log", env)


# ----------------------------------------------------------------------------- the run


@dataclass
class FuzzReport:
    seed: int
    cases: int  # distinct cases
    passes: int = 1  # times each case was sent (per path)
    messages: int = 0  # InferRequest-sized wire messages sent per path (a stream carries several)
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)  # (kind, path, code name) -> calls
    seconds_by_kind: Counter = field(default_factory=Counter)  # (kind, path) -> seconds spent in calls
    problems: list[tuple[str, str]] = field(default_factory=list)  # (check, what happened)
    notes: list[str] = field(default_factory=list)  # differences that are not failures (see compare_paths)
    hung: Counter = field(default_factory=Counter)  # (path, kind, variant) -> DEADLINE_EXCEEDED so far
    warmup: int = 0  # sends before the RSS baseline
    rss_kb: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # service -> [(sends done, kB)]
    rss_growth_kb: dict[str, int] = field(default_factory=dict)  # from the baseline (end of warm-up) to the end
    answered_valid: int = 0  # through the tap, to be found in the capture store
    captured_valid: int = 0
    recorder: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)

    def fail(self, check: str, message: str) -> None:
        self.problems.append((check, message))

    def failed(self, check: str) -> list[str]:
        """The problems of one check (see CHECKS)."""
        return [message for name, message in self.problems if name == check]

    def to_dict(self) -> dict[str, object]:
        counts = [{"class": k, "path": p, "code": c, "calls": n} for (k, p, c), n in sorted(self.counts.items())]
        seconds = [{"class": k, "path": p, "seconds": round(s, 3)} for (k, p), s in sorted(self.seconds_by_kind.items())]
        plain = {k: v for k, v in self.__dict__.items() if k not in ("counts", "seconds_by_kind", "hung")}
        return {**plain, "counts": counts, "seconds_by_kind": seconds}


@dataclass
class RunConfig:
    seed: int = 0
    cases: int = 3000
    passes: int = 1  # send cases 0..cases-1 this many times
    warmup: int = 300  # sends before the RSS baseline: allocator arenas, channels and caches settle
    rss_tolerance_kb: int = 10 * 1024
    checkpoints: int = 10
    concurrency: int = 4  # cases in flight; refusing an oversized message takes gRPC >= 100 ms of waiting, not CPU
    malloc_arena_max: int | None = None  # MALLOC_ARENA_MAX for cloud and tap (see service_env); None: glibc's default
    classes: tuple[str, ...] = tuple(CLASS_WEIGHTS)
    progress: Callable[[str], None] | None = None


@dataclass(frozen=True)
class PathResult:
    outcome: Outcome | None  # None: not sent, this variant already hung on this path HUNG_LIMIT times
    seconds: float


class CallerPool:
    """A caller per path for each worker thread: on a shared connection, big messages would queue the rest."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = addresses
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Caller] = []

    def callers(self) -> dict[str, Caller]:
        if not hasattr(self._local, "callers"):
            self._local.callers = {path: Caller(address) for path, address in self._addresses.items()}
            with self._lock:
                self._opened += self._local.callers.values()
        return self._local.callers

    def close(self) -> None:
        for caller in self._opened:
            caller.close()


def call_paths(case: Case, pool: CallerPool, skip: frozenset[str]) -> dict[str, PathResult]:
    """Send ``case`` direct and through the tap (on a worker thread)."""
    results = {}
    for path, caller in pool.callers().items():
        started = time.monotonic()
        outcome = None if path in skip else caller.call(case)
        results[path] = PathResult(outcome, time.monotonic() - started)
    return results


def compare_paths(case: Case, direct: Outcome, tap: Outcome, report: FuzzReport) -> None:
    """The tap promises to be invisible: the same status, and (but see below) the same number of answers."""
    if direct.code == tap.code and len(direct.answered) == len(tap.answered):
        return
    line = (f"{case.describe()} [{case.variant}]: direct {direct.code.name} ({len(direct.answered)} "
            f"answered), tap {tap.code.name} ({len(tap.answered)} answered): {tap.details[:200]!r}")
    if direct.code == tap.code and case.oversized:  # gRPC fails the call on the big message; earlier answers may be lost
        report.notes.append(line)
    else:
        report.fail(PARITY, line)


def merge(case: Case, results: dict[str, PathResult], report: FuzzReport, answered_tap: dict[str, bytes]) -> None:
    """Count and check one case's outcomes (on the main thread, in case order, so reports are reproducible)."""
    report.messages += max(1, len(case.payloads))
    for path, result in results.items():
        report.seconds_by_kind[(case.kind, path)] += result.seconds
        if result.outcome is None:
            report.counts[(case.kind, path, "SKIPPED_HUNG")] += 1
            continue
        report.counts[(case.kind, path, result.outcome.code.name)] += 1
        if result.outcome.code is CODE.DEADLINE_EXCEEDED:
            report.hung[(path, case.kind, case.variant)] += 1
        problem = check_outcome(case, result.outcome)
        if problem:
            report.fail(problem[0], f"{path}: {case.describe()} [{case.variant}]: {problem[1]}")
    direct, tap = results["direct"].outcome, results["tap"].outcome
    if direct is not None and tap is not None:
        compare_paths(case, direct, tap, report)
    answered = set(tap.answered) if tap is not None else set()
    for position in case.valid:
        request = pb.InferRequest.FromString(case.payloads[position])
        if request.request_id in answered:
            answered_tap[request.request_id] = case.payloads[position]


WINDOW = 64  # sends ahead of the oldest unmerged one: a hung call holds a worker, not the whole run


def checkpoints(config: RunConfig) -> list[int]:
    """Sends after which RSS is read: 5 during the warm-up (its curve), its end (the baseline), then
    ``config.checkpoints`` steps to the end."""
    total = config.cases * config.passes
    warmup = min(config.warmup, total)
    during = range(max(1, warmup // 5), warmup, max(1, warmup // 5)) if warmup >= 5 else ()
    every = max(1, -(-(total - warmup) // config.checkpoints))
    return sorted({*during, warmup, total, *range(warmup, total, every)} - {0})


def run_cases(target: Target, config: RunConfig, pool: CallerPool, services: dict[str, Service],
              report: FuzzReport) -> dict[str, bytes]:
    """All sends, ``config.concurrency`` at a time; returns the valid requests the tap answered (id -> bytes).

    Results are merged in send order. At each checkpoint nothing is in flight when RSS is read.
    With ``passes`` 2 and ``warmup`` = ``cases``, the warm-up is the measured traffic itself: the
    allocators have then seen every size and pattern once, and what the second pass adds is
    what the services keep per request.
    """
    answered_tap: dict[str, bytes] = {}
    marks = set(checkpoints(config))
    pending: deque[tuple[Case, Future]] = deque()
    started = time.monotonic()
    with ThreadPoolExecutor(config.concurrency, thread_name_prefix="fuzz") as executor:
        for send in range(config.cases * config.passes):
            case = make_case(target, config.seed, send % config.cases, config.classes)
            skip = frozenset(p for p in PATHS if report.hung[(p, case.kind, case.variant)] >= HUNG_LIMIT)
            pending.append((case, executor.submit(call_paths, case, pool, skip)))
            while pending and (len(pending) > WINDOW or pending[0][1].done() or send + 1 in marks):
                done, future = pending.popleft()
                merge(done, future.result(), report, answered_tap)
            if send + 1 in marks:
                record_rss(report, services, send + 1)
                if config.progress:
                    config.progress(progress_line(report, send + 1, time.monotonic() - started))
    report.seconds = time.monotonic() - started
    return answered_tap


def missing_captures(captures: Path, target: Target, answered: dict[str, bytes]) -> list[str]:
    """Request ids answered through the tap whose samples are not in the store, bit for bit."""
    store = CaptureStore(captures)
    found: dict[str, list[torch.Tensor]] = {}
    for model_id in (target.model_id, ""):  # a request may leave model_id empty; the tap may or may not fill it in
        loaded = store.load(model_id, feature_shape=target.feature_shape)
        for sample_id, features in zip(loaded.sample_ids, loaded.features):
            if sample_id is not None:
                found.setdefault(sample_id, []).append(features)
    missing = []
    for request_id, payload in answered.items():
        request = pb.InferRequest.FromString(payload)
        sent = decode_tensor(request.features)
        if not all(any(torch.equal(x, y) for y in found.get(s, [])) for s, x in zip(request.sample_ids, sent)):
            missing.append(request_id)
    return missing


def after_checks(target: Target, callers: dict[str, Caller], seed: int, answered_tap: dict[str, bytes]) -> list[str]:
    """Health SERVING on both paths, and a fresh valid request answered on both; what failed."""
    problems = []
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME).SerializeToString()
    for path, caller in callers.items():
        try:
            status = health_pb2.HealthCheckResponse.FromString(caller.channel.unary_unary(HEALTH_CHECK)(check, timeout=10))
            if status.status != health_pb2.HealthCheckResponse.SERVING:
                problems.append(f"{path}: health {health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)} after the run")
        except grpc.RpcError as error:
            problems.append(f"{path}: health check failed after the run: {error.code().name}")
        request = Draw(target, seed, -1).request(batch=2)
        request.request_id, request.sample_ids[:] = f"final-{path}", [f"final-{path}/test/{i}" for i in range(2)]
        final = Case(-1, "final", path, INFER, False, (request.SerializeToString(),), ONLY_OK, valid=(0,), must_answer=1)
        outcome = caller.call(final)
        if outcome.code is not CODE.OK:
            problems.append(f"{path}: a valid request after the run got {outcome.code.name}: {outcome.details!r}")
        elif path == "tap":
            answered_tap[request.request_id] = final.payloads[0]
    return problems


def record_rss(report: FuzzReport, services: dict[str, Service], done: int) -> None:
    for name, service in services.items():
        report.rss_kb.setdefault(name, []).append((done, service.rss_kb()))


def fuzz_services(bundle: Path, target: Target, work: Path, config: RunConfig) -> FuzzReport:
    """Start cloud and tap, run the cases on both paths, then check memory, health and captures."""
    report = FuzzReport(config.seed, config.cases, config.passes, warmup=min(config.warmup, config.cases * config.passes))
    env = service_env(config.malloc_arena_max)
    services = {"cloud": start_cloud(bundle, target, work, env)}
    try:
        services["tap"] = start_tap(services["cloud"].address, target, work, env)
        pool = CallerPool({"direct": services["cloud"].address, "tap": services["tap"].address})
        answered_tap = run_cases(target, config, pool, services, report)
        for problem in after_checks(target, pool.callers(), config.seed, answered_tap):
            report.fail(AFTER, problem)
        pool.close()
        report.exit_codes["tap"], out = services["tap"].stop()
        report.recorder = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        missing = missing_captures(work / "captures", target, answered_tap)
        report.answered_valid, report.captured_valid = len(answered_tap), len(answered_tap) - len(missing)
        for request_id in missing[:20]:
            report.fail(CAPTURE, f"answered valid request {request_id} is not in the capture store")
    finally:
        for name, service in reversed(services.items()):
            report.exit_codes[name] = service.stop()[0] if service.process.poll() is None else service.process.returncode
    judge(report, config)
    return report


def judge(report: FuzzReport, config: RunConfig) -> None:
    """RSS growth from the end of the warm-up to the end, against the tolerance; clean exits."""
    for name, series in report.rss_kb.items():
        measured = [(sends, kb) for sends, kb in series if sends >= report.warmup]
        if len(measured) >= 2:
            report.rss_growth_kb[name] = measured[-1][1] - measured[0][1]
            if report.rss_growth_kb[name] > config.rss_tolerance_kb:
                report.fail(MEMORY, f"{name}: RSS grew {report.rss_growth_kb[name]} kB after warm-up "
                                    f"(tolerance {config.rss_tolerance_kb} kB): {measured}")
    for name, code in report.exit_codes.items():
        if code != 0:
            report.fail(EXIT, f"{name}: exited with {code} after SIGTERM; see its log")


def progress_line(report: FuzzReport, done: int, seconds: float) -> str:
    rss = ", ".join(f"{name} RSS {series[-1][1] / 1024:.1f} MB" for name, series in report.rss_kb.items())
    return f"[fuzz] {done}/{report.cases * report.passes} sends, {seconds:.1f} s, {len(report.problems)} problem(s), {rss}"


# ----------------------------------------------------------------------------- the script


def write_bundle(out: Path) -> Path:
    """An untrained digits-shaped bundle: what the service does with hostile bytes does not depend on the weights."""
    from cem.bundle import save_bundle
    from cem.data import load_dataset
    from cem.models import SplitModel, SplitModelConfig

    _, info = load_dataset("digits", split="train")
    torch.manual_seed(0)
    config = SplitModelConfig(in_channels=1, num_classes=10, width=0.25, mean=info.mean, std=info.std)
    save_bundle(out, SplitModel(config).eval(), noise_std=0.1, dataset=info.to_dict(), training={"note": "fuzz, untrained"})
    return out


def target_for(bundle: Path, max_batch: int, max_message_bytes: int) -> Target:
    from cem.bundle import load_manifest

    manifest = load_manifest(bundle)
    return Target(manifest.model_id, tuple(manifest.feature_shape), max_batch, max_message_bytes)  # type: ignore[arg-type]


def format_table(report: FuzzReport) -> str:
    """Calls per message class x path x status code, then RSS, captures and problems."""
    codes = sorted({c for _, _, c in report.counts}, key=lambda c: (c != "OK", c))
    header = f"{'class':<15} {'path':<7}" + "".join(f"{c:>19}" for c in codes) + f"{'total':>8}{'seconds':>9}"
    lines = [header, "-" * len(header)]
    for kind in CLASS_WEIGHTS:
        for path in PATHS:
            row = [report.counts.get((kind, path, c), 0) for c in codes]
            if sum(row):
                seconds = report.seconds_by_kind.get((kind, path), 0.0)
                lines.append(f"{kind:<15} {path:<7}" + "".join(f"{n:>19}" for n in row) + f"{sum(row):>8}{seconds:>9.1f}")
    lines.append("")
    lines.append(f"RSS MB at sends {' '.join(str(sends) for sends, _ in next(iter(report.rss_kb.values()), []))} "
                 f"(| = end of warm-up, the baseline)")
    for name, series in report.rss_kb.items():
        trail = " ".join(("| " if sends == report.warmup else "") + f"{kb / 1024:.1f}" for sends, kb in series)
        lines.append(f"{name:<5} {trail}  growth after warm-up {report.rss_growth_kb.get(name, 0) / 1024:+.1f} MB")
    lines.append(f"captures: {report.captured_valid}/{report.answered_valid} answered valid requests found; "
                 f"recorder {report.recorder}")
    lines.append(f"exit codes after SIGTERM: {report.exit_codes}")
    lines.append(f"{report.cases} cases x {report.passes} pass(es), {report.messages} messages per path, {report.seconds:.1f} s, "
                 f"seed {report.seed}; problems: {len(report.problems)}, notes: {len(report.notes)}")
    lines += [f"  {check}: {message}" for check, message in report.problems[:50]]
    lines += [f"  note: {n}" for n in report.notes[:10]]
    return "\n".join(lines)


def replay(target: Target, seed: int, index: int, classes: tuple[str, ...], addresses: dict[str, str]) -> None:
    """Print one case and its outcome on each path (the reproducer for a problem the table reports)."""
    case = make_case(target, seed, index, classes)
    print(case.describe(), case.variant, "expected", sorted(c.name for c in case.expected))
    for position, payload in enumerate(case.payloads):
        print(f"  message {position}: {len(payload)} bytes, head {payload[:48].hex()}")
    for path, address in addresses.items():
        caller = Caller(address)
        outcome = caller.call(case)
        caller.close()
        print(f"  {path}: {outcome.code.name} {outcome.details[:300]!r} answered={len(outcome.answered)}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="distinct cases (one call per path each, per pass)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: a fresh untrained digits bundle)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-message-bytes", type=int, default=256 * 1024)
    parser.add_argument("--passes", type=int, default=2, help="send every case this many times")
    parser.add_argument("--warmup", type=int, help="sends before the RSS baseline (default: all passes but the last)")
    parser.add_argument("--rss-tolerance-mb", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4, help="cases in flight at once")
    parser.add_argument("--malloc-arena-max", type=int, help="MALLOC_ARENA_MAX for cloud and tap (default: glibc's)")
    parser.add_argument("--classes", default=",".join(CLASS_WEIGHTS),
                        help="comma-separated message classes to draw from (default: all, weighted as CLASS_WEIGHTS)")
    parser.add_argument("--case", type=int, help="replay only this case (printed in detail) and exit")
    parser.add_argument("--keep", type=Path, help="work folder to keep (logs, captures) instead of a temporary one")
    parser.add_argument("--json", action="store_true", help="last stdout line: the report as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = args.bundle or write_bundle(work / "bundle")
        target = target_for(bundle, args.max_batch, args.max_message_bytes)
        classes = tuple(name for name in args.classes.split(",") if name)
        unknown = sorted(set(classes) - set(CLASS_WEIGHTS))
        if unknown:
            raise SystemExit(f"fuzz_services: expected classes from {list(CLASS_WEIGHTS)}, got {unknown}")
        if args.case is not None:
            env = service_env(args.malloc_arena_max)
            cloud = start_cloud(bundle, target, work, env)
            tap = start_tap(cloud.address, target, work, env)
            try:
                replay(target, args.seed, args.case, classes, {"direct": cloud.address, "tap": tap.address})
            finally:
                tap.stop()
                cloud.stop()
            return 0
        warmup = args.messages * (args.passes - 1) if args.warmup is None else args.warmup
        config = RunConfig(seed=args.seed, cases=args.messages, passes=args.passes, warmup=warmup,
                           rss_tolerance_kb=int(args.rss_tolerance_mb * 1024), classes=classes,
                           concurrency=args.concurrency, malloc_arena_max=args.malloc_arena_max,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
        report = fuzz_services(bundle, target, work, config)
    print(f"cem-cloud + cem-tap fuzz: max batch {target.max_batch}, max message {target.max_message_bytes} B, "
          f"features {target.feature_shape}; cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(format_table(report))
    if args.json:
        print(json.dumps(report.to_dict()))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
