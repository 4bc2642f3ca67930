"""What a fuzz case is and what the run checks: methods, status-code sets, check names, ``Target``, ``Case``.

Every name here is shared by the generator (``cases``), the caller (``calls``) and the judge
(``checks``); nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from cem.wire import SERVICE_NAME

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
PATHS = ("direct", "tap")
# The checks a problem can fail, one per property the fuzz asserts.
FORBIDDEN, STATUS, PARITY, MEMORY, AFTER, CAPTURE, EXIT = (
    "forbidden status", "unexpected status", "tap differs", "memory", "after the run", "capture", "exit")
CHECKS = (FORBIDDEN, STATUS, PARITY, MEMORY, AFTER, CAPTURE, EXIT)


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

