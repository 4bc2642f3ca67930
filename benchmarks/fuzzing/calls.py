"""Sending a case: raw bytes over grpc's generic multicallables, one channel per path and worker thread.

No serializer on either side, so nothing on the client refuses to send what the generator built;
every call has a deadline (``CALL_TIMEOUT_S``), so a call the server never answers ends
DEADLINE_EXCEEDED, which no case expects.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

from fuzzing.spec import CALL_TIMEOUT_S, CODE, INFER, STREAM, Case
from protos import cem_split_pb2 as pb


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


@dataclass(frozen=True)
class PathResult:
    outcome: Outcome
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


def call_paths(case: Case, pool: CallerPool) -> dict[str, PathResult]:
    """Send ``case`` direct and through the tap (on a worker thread)."""
    results = {}
    for path, caller in pool.callers().items():
        started = time.monotonic()
        outcome = caller.call(case)
        results[path] = PathResult(outcome, time.monotonic() - started)
    return results
