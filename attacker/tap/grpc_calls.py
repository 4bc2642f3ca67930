"""The captured gRPC calls of one HTTP/2 connection, paired by the proxy's rules, for the relay tap's reader.

``attacker.tap.h2_reader`` reads the frames and header blocks and tells
``GrpcCalls`` what each stream carried; this module knows gRPC: which ``:path``
is captured, the 5-byte length prefix of every message, ``grpc-encoding``,
``grpc-status`` and which request an answer answers. It offers the answered
requests to a sink (the ``CaptureRecorder``) with the proxy's rules
(``attacker.tap.proxy``), so both modes record the same things:

- a unary call (``Infer``) is offered once it ended with ``grpc-status`` 0, its
  first request with its first answer;
- on a stream (``InferStream``) each answer pairs with the oldest unanswered
  request and is offered as it arrives;
- requests still unanswered when a call ends otherwise (another status, no
  status at all, a RST_STREAM, the connection closing) are counted as rejected
  upstream;
- an answer the reader cannot read (an encoding it cannot undo, or corrupt) is
  what the proxy's own gRPC client cannot read either: there the upstream call
  fails and its request is counted rejected, and so it is here, never offered
  as if it had no answer;
- a call the server never processed (reset with REFUSED_STREAM, or above the
  last stream id of the server's GOAWAY) is retried by gRPC on its own, so it
  is dropped and counted as ``refused_calls``, not as rejected: the retry is
  what will be answered.

Bounded: a message over ``max_message_bytes`` (on the wire or inflated), or a
call holding more than its budget, ends the capture of that call only
(``oversized_calls``); inflating is paid for from the connection's parse-work
budget (``attacker.tap.parse_work``) and stops at what it can pay.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from attacker.tap.parse_work import WorkBudget
from attacker.tap.reader_limits import ReaderLimits, ReaderStats
from cem.captures.records import CAPTURED_METHODS
from protos import cem_split_pb2 as pb

logger = logging.getLogger(__name__)

CLIENT, SERVER = 0, 1  # a connection's two byte streams: what the client sent, what the server sent
QUEUED_OVERHEAD = 64  # charged per held message, so empty messages cannot pile up for free
_INFLATE_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}  # what grpc-encoding names
_NO_GOAWAY = 1 << 31  # above every stream id

_SERVICE = pb.DESCRIPTOR.services_by_name["SplitInference"]
# ``:path`` of each captured method -> (its name, whether it is unary)
CAPTURED_PATHS = {
    method.encode(): (method, not (m.client_streaming or m.server_streaming))
    for method in CAPTURED_METHODS
    for m in (_SERVICE.methods_by_name[method.rsplit("/", 1)[1]],)
}


class CallSink(Protocol):
    """Where answered requests go (``CaptureRecorder`` is one)."""

    def offer(self, method: str, payload: bytes, response: bytes | None = None) -> bool: ...

    def count_rejected(self, requests: int = 1) -> None: ...


class Oversized(Exception):
    """One call's messages exceed the limit; the call is no longer followed."""


class _Call:
    """One captured call being followed: its messages in both directions and what is still unanswered."""

    __slots__ = ("answer", "answered", "body", "encodings", "flags", "method", "need", "prefix", "queued",
                 "requests_seen", "unanswered", "unary")

    def __init__(self, method: str, unary: bool, request_encoding: bytes) -> None:
        self.method = method
        self.unary = unary
        self.encodings = [request_encoding, b"identity"]  # per direction, from its headers
        self.prefix = [bytearray(), bytearray()]  # gRPC's 5-byte message prefix being read, per direction
        self.body = [bytearray(), bytearray()]  # the message being read, per direction
        self.need = [-1, -1]  # its length once the prefix is read; -1 while reading the prefix
        self.flags = [0, 0]  # its compressed flag
        self.unanswered: deque[bytes | None] = deque()  # None: a request that could not be read
        self.queued = 0  # bytes held in ``unanswered`` and ``answer``, overhead included
        self.requests_seen = 0
        self.answer: bytes | None = None  # a unary call's answer, held until its status arrives; None: unreadable
        self.answered = False

    def held(self) -> int:
        return self.queued + len(self.body[CLIENT]) + len(self.body[SERVER])

    def messages(self, direction: int, data: bytes, limit: int) -> Iterator[tuple[int, bytes]]:
        """(compressed flag, message) for every message ``data`` completes; a generator, so the caller
        holds each before the next length is checked against ``limit``."""
        prefix, body = self.prefix[direction], self.body[direction]
        pos = 0
        while pos < len(data):
            if self.need[direction] < 0:
                take = min(5 - len(prefix), len(data) - pos)
                prefix += data[pos:pos + take]
                pos += take
                if len(prefix) < 5:
                    return
                length = int.from_bytes(prefix[1:5], "big")
                if length > limit:
                    raise Oversized(f"a message of {length} bytes")
                self.flags[direction], self.need[direction] = prefix[0], length
                prefix.clear()
            take = min(self.need[direction] - len(body), len(data) - pos)
            body += data[pos:pos + take]
            pos += take
            if len(body) == self.need[direction]:
                message = bytes(body)
                body.clear()
                self.need[direction] = -1
                yield self.flags[direction], message


class GrpcCalls:
    """The captured calls of one connection, by stream id; ``held`` is what they hold together, kept up to date."""

    def __init__(self, sink: CallSink, limits: ReaderLimits, stats: ReaderStats, work: WorkBudget,
                 name: str = "connection") -> None:
        self._sink = sink
        self._limits = limits
        self._stats = stats
        self._work = work
        self._name = name  # for log lines
        self._calls: dict[int, _Call] = {}
        self._goaway = _NO_GOAWAY  # the lowest last stream id of the server's GOAWAYs
        self.held = 0

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, stream: int) -> bool:
        return stream in self._calls

    def open(self, stream: int, headers: dict[bytes, bytes]) -> None:
        """The client opened ``stream`` with these request headers: follow it if its method is captured."""
        captured = CAPTURED_PATHS.get(headers.get(b":path", b""))
        if captured is None:
            return
        if stream > self._goaway:  # the server said it will not process it; the client retries it elsewhere
            self._stats.refused_calls += 1
            return
        if len(self._calls) >= self._limits.max_streams:
            self._stats.streams_ignored += 1
            logger.info("%s: not capturing a call: %d captured calls already open", self._name, len(self._calls))
            return
        self._calls[stream] = _Call(*captured, headers.get(b"grpc-encoding", b"identity"))

    def answer_headers(self, stream: int, headers: dict[bytes, bytes], end_stream: bool) -> None:
        """The server's header block on ``stream``: its answer's headers, or trailers (``end_stream``)."""
        call = self._calls.get(stream)
        if call is None:
            return
        if end_stream:  # trailers, or a trailers-only answer
            self.finish(stream, _status(headers.get(b"grpc-status")))
        else:
            call.encodings[SERVER] = headers.get(b"grpc-encoding", b"identity")

    def data(self, direction: int, stream: int, data: bytes) -> None:
        """DATA bytes of ``stream`` from ``direction``; may raise ``Overworked`` (the connection's budget)."""
        call = self._calls.get(stream)
        if call is None:
            return
        before = call.held()
        limit = self._limits.max_message_bytes
        try:
            for flag, raw in call.messages(direction, data, limit):
                message = self._inflate(call, direction, flag, raw)
                size = QUEUED_OVERHEAD + (0 if message is None else len(message))
                if direction == CLIENT:
                    self._on_request(call, message, size)
                else:
                    self._on_answer(call, message, size)
        except Oversized as exc:
            del self._calls[stream]
            self.held -= before
            self._stats.oversized_calls += 1
            logger.info("%s: no longer capturing a %s call: %s (messages up to %d bytes)", self._name, call.method,
                        exc, limit)
            return
        self.held += call.held() - before

    def finish(self, stream: int, status: int | None) -> None:
        """The call on ``stream`` ended with ``status`` (None: none arrived): record or count its requests."""
        call = self._calls.pop(stream, None)
        if call is None:
            return
        self.held -= call.held()
        if call.unary and status == 0 and call.answered and call.unanswered:
            request = call.unanswered[0]
            if request is not None:
                if call.answer is None:  # answered, but not in a form anyone could read
                    self._sink.count_rejected(1)
                else:
                    self._sink.offer(call.method, request, call.answer)
            return
        unanswered = sum(request is not None for request in call.unanswered)
        if unanswered:
            self._sink.count_rejected(unanswered)

    def refuse(self, stream: int) -> None:
        """The server refused ``stream`` before processing it (REFUSED_STREAM): gRPC retries it."""
        if self._calls.pop(stream, None) is not None:
            self._stats.refused_calls += 1
            self._recount()

    def refuse_above(self, last_stream: int) -> None:
        """The server's GOAWAY: calls above ``last_stream`` were never processed, and no later one will be."""
        self._goaway = min(self._goaway, last_stream)
        refused = [stream for stream in self._calls if stream > last_stream]
        for stream in refused:
            del self._calls[stream]
        if refused:
            self._stats.refused_calls += len(refused)
            self._recount()

    def close(self) -> None:
        """The connection closed: every call still open ends unanswered."""
        for stream in list(self._calls):
            self.finish(stream, None)

    def clear(self) -> None:
        """Forget every call, counting nothing (the connection is no longer followed)."""
        self._calls.clear()
        self.held = 0

    def _recount(self) -> None:
        self.held = sum(call.held() for call in self._calls.values())

    def _inflate(self, call: _Call, direction: int, flag: int, raw: bytes) -> bytes | None:
        """The message, decompressed; None when it cannot be (counted); Oversized when it inflates too far,
        Overworked when the connection cannot pay for inflating it."""
        if flag == 0:
            return raw
        wbits = _INFLATE_WBITS.get(call.encodings[direction]) if flag == 1 else None
        if wbits is not None:
            inflater = zlib.decompressobj(wbits)
            limit = self._limits.max_message_bytes
            # Bounded by the message limit and by what the connection can still pay: a bomb stops at either.
            most = min(limit, self._work.available()) + 1
            try:
                message = inflater.decompress(raw, most)
            except zlib.error:
                message = None
            if message is not None:
                self._work.spend(len(message), f"inflating a {call.method} message", done=True)
                if len(message) > limit:
                    raise Oversized("a message that inflates")
                if inflater.eof:
                    return message
        self._stats.undecodable_messages += 1
        logger.info("%s: a %s message in encoding %r could not be read", self._name, call.method,
                    call.encodings[direction].decode("ascii", "replace")[:32])
        return None

    def _hold(self, call: _Call, size: int) -> None:
        """``call`` keeps a message of ``size`` bytes (overhead included) until it is paired, within its budget.
        Only what is kept is checked: a stream's answer is paired at once and a unary call's extra messages are
        dropped, so counting them would give up calls that hold far less than their budget."""
        budget = self._limits.call_budget
        if size + call.held() > budget:
            raise Oversized(f"a message of {size} bytes with {call.held()} held, over the call's {budget}-byte budget")
        call.queued += size

    def _on_request(self, call: _Call, message: bytes | None, size: int) -> None:
        call.requests_seen += 1
        if call.unary and call.requests_seen > 1:
            return  # the server reads only the first message of a unary call
        self._hold(call, size)
        call.unanswered.append(message)

    def _on_answer(self, call: _Call, message: bytes | None, size: int) -> None:
        if call.unary:
            if not call.answered:
                self._hold(call, size)
                call.answer, call.answered = message, True
            return
        if not call.unanswered:
            return
        request = call.unanswered.popleft()
        call.queued -= QUEUED_OVERHEAD + (0 if request is None else len(request))
        if request is None:
            return
        if message is None:  # the proxy's gRPC client fails the call on an answer it cannot read
            self._sink.count_rejected(1)
        else:
            self._sink.offer(call.method, request, message)


def _status(value: bytes | None) -> int | None:
    """``grpc-status`` as a number; None when absent or not one."""
    return int(value) if value is not None and value.isdigit() and len(value) < 4 else None
