"""The message classes of the fuzz (``CLASS_WEIGHTS``) and ``make_case``, which draws one case of one class.

Classes: well-formed requests (``valid``); random bytes; protobuf-shaped random fields; mutated
(truncated, bit-flipped, spliced) valid messages; well-formed messages with hostile tensor values
or hostile ids (``fuzzing.messages``); messages just above (and exactly at) the message limit;
unknown methods and wrong call shapes; streams mixing good and bad messages. Case ``K`` of seed
``S`` is built from its own ``random.Random(f"{S}:{K}")``, so any case can be replayed alone.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import grpc

from cem.wire import SERVICE_NAME
from fuzzing.messages import (
    ID_MUTATORS,
    NONFINITE,
    VALUE_MUTATORS,
    Draw,
    hostile_payload,
    length_delimited,
    pad_to,
    varint,
)
from fuzzing.spec import (
    CLIENT_FAULTS,
    CODE,
    INFER,
    INVALID,
    MAYBE_OK,
    MODEL_INFO,
    ONLY_OK,
    STREAM,
    TOO_LARGE,
    Case,
    Target,
)
from protos import cem_split_pb2 as pb


def build_valid(d: Draw) -> Case:
    request = d.request()
    if d.rng.random() < 0.5:
        payload, variant = (
            request.SerializeToString(),
            f"{pb.DType.Name(request.features.dtype)} B={request.features.shape[0]}",
        )
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
    return Case(
        d.index, "random_bytes", f"Infer {size // 512 * 512}+ bytes", method, False, (d.bytes(size),), CLIENT_FAULTS
    )


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
    return Case(
        d.index, "hostile_ids", variant, INFER, False, (payload,), expected, valid=valid, must_answer=len(valid)
    )


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
        return Case(
            d.index, "methods", f"{how} {method[:40]}", method, streaming, payloads, frozenset({CODE.UNIMPLEMENTED})
        )
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
    "valid": (build_valid, 0.16),
    "random_bytes": (build_random_bytes, 0.12),
    "random_fields": (build_random_fields, 0.08),
    "mutated": (build_mutated, 0.12),
    "hostile_values": (build_hostile_values, 0.16),
    "hostile_ids": (build_hostile_ids, 0.12),
    "oversized": (build_oversized, 0.06),
    "methods": (build_methods, 0.06),
    "mixed_stream": (build_mixed_stream, 0.12),
}


def make_case(target: Target, seed: int, index: int, classes: tuple[str, ...] = tuple(CLASS_WEIGHTS)) -> Case:
    """Case ``index`` of run ``seed``; independent of every other case, so it can be replayed alone."""
    d = Draw(target, seed, index)
    kind = d.rng.choices(classes, weights=[CLASS_WEIGHTS[n][1] for n in classes])[0]
    return CLASS_WEIGHTS[kind][0](d)
