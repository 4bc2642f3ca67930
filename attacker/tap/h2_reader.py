"""Reading the gRPC calls off a copy of one HTTP/2 connection's bytes, for the relay tap.

The relay (``attacker.tap.wire_relay``) forwards a connection's bytes untouched
and hands a copy of every chunk, in order, to one ``H2Reader`` per connection.
The reader rebuilds the calls from them (RFC 9113 frames, RFC 7541 HPACK
headers, gRPC's length-prefixed messages and ``grpc-encoding`` compression) and
gives the captured methods' answered requests to a sink (the
``CaptureRecorder``) with the proxy's pairing rules (``attacker.tap.proxy``):

- a unary call (``Infer``) is offered once it ended with ``grpc-status`` 0, its
  first request with its first answer;
- on a stream (``InferStream``) each answer pairs with the oldest unanswered
  request and is offered as it arrives;
- requests still unanswered when a call ends otherwise (another status, a
  RST_STREAM, a GOAWAY that did not cover it, the connection closing) are
  counted as rejected upstream.

No sockets and no clock, so it is tested on frames built by hand. Every header
block of both directions is decoded in order, those of calls it does not capture
too, because HPACK's dynamic table is shared by the whole connection. Hostile
bytes never raise out of it and cannot grow it without bound:

- any framing, HPACK or protocol error, and bytes that are not HTTP/2 at all,
  make the connection *lost*: counted once, logged once, its further bytes
  ignored (the relay still forwards them);
- a message over ``max_message_bytes`` (before or after decompression), or
  unanswered requests adding up past it, end the capture of that call only
  (``oversized``);
- a message in an encoding the reader cannot undo (not identity, gzip or
  deflate, or corrupt) is skipped but keeps its place in the pairing
  (``undecodable``);
- captured calls beyond ``max_streams`` open at once on one connection are not
  followed (``streams_ignored``); header blocks are capped, encoded and decoded,
  and the HPACK table follows SETTINGS_HEADER_TABLE_SIZE up to a cap.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

from hpack import Decoder, HPACKError
from hpack.table import HeaderTable

from cem.captures.records import CAPTURED_METHODS
from cem.errors import ConfigError
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES
from protos import cem_split_pb2 as pb

logger = logging.getLogger(__name__)

CLIENT, SERVER = 0, 1  # a connection's two byte streams: what the client sent, what the server sent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x5, 0x7, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE = 0x1
_FRAME_HEADER = struct.Struct(">HBBBI")  # a 24-bit length as 16 + 8 bits, type, flags, stream id
_MAX_CONTROL_FRAME = 16 * 1024  # SETTINGS, RST_STREAM and GOAWAY frames are read whole; gRPC's are a few bytes
_QUEUED_OVERHEAD = 64  # charged per held message, so empty messages cannot pile up for free
CALL_BUDGET_MESSAGES = 4  # a followed call holds at most this many largest messages at once (ReaderLimits)
_INFLATE_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}  # what grpc-encoding names
# Decoded header blocks kept per direction: gRPC repeats the same few byte-identical blocks call after call
_CACHE_ENTRIES, _CACHE_BLOCK_BYTES, _CACHE_HEADER_BYTES = 16, 512, 4096

_SERVICE = pb.DESCRIPTOR.services_by_name["SplitInference"]
# ``:path`` of each captured method -> (its name, whether it is unary)
_CAPTURED_PATHS = {
    method.encode(): (method, not (m.client_streaming or m.server_streaming))
    for method in CAPTURED_METHODS
    for m in (_SERVICE.methods_by_name[method.rsplit("/", 1)[1]],)
}


class CallSink(Protocol):
    """Where answered requests go (``CaptureRecorder`` is one)."""

    def offer(self, method: str, payload: bytes, response: bytes | None = None) -> bool: ...

    def count_rejected(self, requests: int = 1) -> None: ...


@dataclass(frozen=True)
class ReaderLimits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # one message, on the wire and inflated: gRPC's own rule
    max_streams: int = 1000  # captured calls followed at once per connection
    max_header_block_bytes: int = 64 * 1024  # a header block, encoded and decoded (gRPC's own hard limit: 16 KiB)
    max_header_table_bytes: int = 64 * 1024  # the HPACK dynamic table a peer may ask for (gRPC's default: 4 KiB)
    # What one followed call may hold at once (its unanswered requests, an answer, partial messages);
    # None: CALL_BUDGET_MESSAGES messages' worth, so a stream may run a few requests ahead of its answers.
    max_call_bytes: int | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and value < 1:
                raise ConfigError(f"expected {name} >= 1, got {value}")

    @property
    def call_budget(self) -> int:
        return self.max_call_bytes if self.max_call_bytes is not None else CALL_BUDGET_MESSAGES * self.max_message_bytes


@dataclass
class ReaderStats:
    """Counters of every reader of one relay; each is written by the one parser thread only."""

    lost_connections: int = 0  # connections no longer followed (not HTTP/2, a protocol error, chunks not handed over)
    streams_ignored: int = 0  # captured calls not followed: too many open on their connection
    oversized_calls: int = 0  # captured calls no longer followed: a message or their unanswered requests too large
    undecodable_messages: int = 0  # captured-method messages in an encoding the reader cannot undo

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Lost(Exception):
    """The connection can no longer be followed."""


class _Oversized(Exception):
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
        self.answer: bytes | None = None  # a unary call's answer, held until its status arrives
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
                    raise _Oversized(f"a message of {length} bytes")
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


class _CountingTable(HeaderTable):
    """hpack's dynamic table, counting insertions. It changes only by an insertion, an eviction (its length
    drops) or a new size limit, so (insertions, length, limit) names its state."""

    def __init__(self) -> None:
        super().__init__()
        self.insertions = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.insertions += 1
        super().add(name, value)

    def state(self) -> tuple[int, int, int]:
        return self.insertions, len(self.dynamic_entries), self.maxsize


class _Side:
    """The frame reader's state for one direction of the connection."""

    __slots__ = ("block", "block_end_stream", "block_stream", "buffer", "cache", "data_end_stream", "data_left",
                 "data_stream", "decoder", "in_data", "pad", "preface_left", "skip", "table")

    def __init__(self, preface: bool, max_header_block_bytes: int) -> None:
        self.buffer = bytearray()
        self.preface_left = len(PREFACE) if preface else 0
        self.skip = 0  # bytes still to pass over (padding, frames not read)
        self.in_data = False  # inside a DATA frame's data
        self.data_left = 0
        self.data_stream = 0
        self.data_end_stream = False
        self.pad = 0
        self.block: bytearray | None = None  # a header block waiting for its CONTINUATION frames
        self.block_stream = 0
        self.block_end_stream = False
        self.decoder = Decoder(max_header_list_size=max_header_block_bytes)
        self.table = self.decoder.header_table = _CountingTable()
        self.cache: dict[tuple[bytes, int, int, int], dict[bytes, bytes]] = {}

    def decode(self, block: bytes) -> dict[bytes, bytes]:
        """The headers of the next header block of this direction.

        A block that left the table as it found it decodes the same whenever the table is in that state again,
        so it is kept: pure-Python HPACK was most of the reader's time, and gRPC's blocks repeat once its
        table is warm (three byte-identical blocks per unary call).
        """
        state = self.table.state()
        key = (block, *state)
        headers = self.cache.get(key)
        if headers is None:
            headers = dict(self.decoder.decode(block, raw=True))
            if (self.table.state() == state and len(block) <= _CACHE_BLOCK_BYTES
                    and sum(len(name) + len(value) for name, value in headers.items()) <= _CACHE_HEADER_BYTES):
                if len(self.cache) >= _CACHE_ENTRIES:
                    self.cache.clear()
                self.cache[key] = headers
        return headers


class H2Reader:
    """The gRPC calls of one connection, from the bytes of its two directions fed in order (``CLIENT``/``SERVER``)."""

    def __init__(self, sink: CallSink, limits: ReaderLimits | None = None, stats: ReaderStats | None = None,
                 name: str = "connection") -> None:
        self.limits = limits or ReaderLimits()
        self.stats = stats if stats is not None else ReaderStats()
        self.name = name  # for log lines
        self.lost = False
        self._sink = sink
        self._sides = (_Side(True, self.limits.max_header_block_bytes),
                       _Side(False, self.limits.max_header_block_bytes))
        self._calls: dict[int, _Call] = {}
        self._last_client_stream = 0

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def feed(self, direction: int, data: bytes) -> None:
        """The next bytes ``direction`` sent; never raises on what they hold."""
        if self.lost or not data:
            return
        side = self._sides[direction]
        side.buffer += data
        try:
            consumed = self._read_frames(direction, side)
        except _Lost as exc:
            self.lose(str(exc))
            return
        except HPACKError as exc:  # its messages may quote the block: only the kind is logged
            self.lose(f"HPACK: {type(exc).__name__}")
            return
        del side.buffer[:consumed]

    def close(self) -> None:
        """The connection closed: every call still open ends unanswered."""
        for stream in list(self._calls):
            self._finish(stream, None)

    def lose(self, reason: str) -> None:
        """Stop following this connection (its bytes still flow); counted and logged once."""
        if self.lost:
            return
        self.lost = True
        self.stats.lost_connections += 1
        self._calls.clear()
        self._sides = (_Side(False, 1), _Side(False, 1))  # drop the buffers and tables
        logger.warning("%s: no longer captured (%s); its bytes still flow", self.name, reason)

    def _read_frames(self, direction: int, side: _Side) -> int:
        """Consume what ``side.buffer`` holds; returns how many bytes were read."""
        buf, pos, end = side.buffer, 0, len(side.buffer)
        while pos < end or side.in_data:
            if side.preface_left:
                done = len(PREFACE) - side.preface_left
                take = min(side.preface_left, end - pos)
                if buf[pos:pos + take] != PREFACE[done:done + take]:
                    raise _Lost("not HTTP/2: no client preface")
                side.preface_left -= take
                pos += take
            elif side.skip:
                take = min(side.skip, end - pos)
                side.skip -= take
                pos += take
            elif side.in_data:
                take = min(side.data_left, end - pos)
                if take:
                    if side.data_stream in self._calls:  # the data of other calls is not even copied
                        self._on_data(direction, side.data_stream, bytes(buf[pos:pos + take]))
                    side.data_left -= take
                    pos += take
                if side.data_left:
                    break
                side.in_data, side.skip = False, side.pad
                if side.data_end_stream:
                    self._on_end_stream(direction, side.data_stream)
            else:
                if end - pos < 9:
                    break
                high, low, kind, flags, stream = _FRAME_HEADER.unpack_from(buf, pos)
                length, stream = high << 8 | low, stream & 0x7FFFFFFF
                if side.block is not None and (kind != CONTINUATION or stream != side.block_stream):
                    raise _Lost("a header block interrupted")
                if kind == DATA:
                    if flags & PADDED and end - pos < 10:
                        break
                    self._start_data(side, length, flags, stream, buf[pos + 9] if flags & PADDED else None)
                    pos += 10 if flags & PADDED else 9
                elif kind in (HEADERS, CONTINUATION, RST_STREAM, SETTINGS, GOAWAY, PUSH_PROMISE):
                    cap = self.limits.max_header_block_bytes if kind in (HEADERS, CONTINUATION) else _MAX_CONTROL_FRAME
                    if length > cap:
                        raise _Lost(f"a frame of type {kind} of {length} bytes")
                    if end - pos < 9 + length:
                        break
                    self._on_frame(direction, side, kind, flags, stream, bytes(buf[pos + 9:pos + 9 + length]))
                    pos += 9 + length
                else:  # PING, PRIORITY, WINDOW_UPDATE and unknown types: nothing a capture needs
                    side.skip = length
                    pos += 9
        return pos

    def _start_data(self, side: _Side, length: int, flags: int, stream: int, pad: int | None) -> None:
        if stream == 0:
            raise _Lost("DATA on stream 0")
        if pad is not None and pad >= length:
            raise _Lost("DATA padding longer than the frame")
        side.in_data, side.data_stream, side.data_end_stream = True, stream, bool(flags & END_STREAM)
        side.pad = pad or 0
        side.data_left = length - (0 if pad is None else 1 + pad)

    def _on_frame(self, direction: int, side: _Side, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == HEADERS:
            if stream == 0:
                raise _Lost("HEADERS on stream 0")
            start, stop = 0, len(payload)
            if flags & PADDED:
                start, stop = 1, len(payload) - (payload[0] if payload else len(payload) + 1)
            start += 5 if flags & PRIORITY else 0
            if start > stop:
                raise _Lost("HEADERS padding or priority longer than the frame")
            side.block, side.block_stream = bytearray(payload[start:stop]), stream
            side.block_end_stream = bool(flags & END_STREAM)
        elif kind == CONTINUATION:
            if side.block is None:
                raise _Lost("CONTINUATION without HEADERS")
            side.block += payload
            if len(side.block) > self.limits.max_header_block_bytes:
                raise _Lost(f"a header block over {self.limits.max_header_block_bytes} bytes")
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise _Lost("RST_STREAM of the wrong size")
            self._finish(stream, None)
        elif kind == SETTINGS:
            self._on_settings(direction, flags, payload)
        elif kind == GOAWAY:
            if len(payload) < 8:
                raise _Lost("GOAWAY too short")
            if direction == SERVER:  # calls above its last stream id were never processed
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                for open_stream in [s for s in self._calls if s > last]:
                    self._finish(open_stream, None)
        else:
            raise _Lost("server push, which gRPC never uses")
        if kind in (HEADERS, CONTINUATION) and flags & END_HEADERS:
            block, side.block = side.block, None
            assert block is not None
            headers = side.decode(bytes(block))
            self._on_headers(direction, side.block_stream, side.block_end_stream, headers)

    def _on_settings(self, direction: int, flags: int, payload: bytes) -> None:
        if flags & ACK:
            return
        if len(payload) % 6:
            raise _Lost("SETTINGS of the wrong size")
        # The sender's decoder may now take a larger table from the encoder of the other direction. The reader
        # only follows, so it takes the largest size ever announced (within the cap) instead of racing the ACK.
        decoder = self._sides[SERVER if direction == CLIENT else CLIENT].decoder
        for offset in range(0, len(payload), 6):
            if int.from_bytes(payload[offset:offset + 2], "big") == SETTINGS_HEADER_TABLE_SIZE:
                size = int.from_bytes(payload[offset + 2:offset + 6], "big")
                decoder.max_allowed_table_size = min(max(decoder.max_allowed_table_size, size),
                                                     self.limits.max_header_table_bytes)

    def _on_headers(self, direction: int, stream: int, end_stream: bool, headers: dict[bytes, bytes]) -> None:
        if direction == CLIENT:
            if stream <= self._last_client_stream or not stream % 2:
                return  # trailers of a call (gRPC sends none), or a stream id the server will refuse
            self._last_client_stream = stream
            captured = _CAPTURED_PATHS.get(headers.get(b":path", b""))
            if captured is None:
                return
            if len(self._calls) >= self.limits.max_streams:
                self.stats.streams_ignored += 1
                logger.info("%s: not capturing a call: %d captured calls already open", self.name, len(self._calls))
                return
            self._calls[stream] = _Call(*captured, headers.get(b"grpc-encoding", b"identity"))
            return
        call = self._calls.get(stream)
        if call is None:
            return
        if end_stream:  # trailers, or a trailers-only answer
            self._finish(stream, _status(headers.get(b"grpc-status")))
        else:
            call.encodings[SERVER] = headers.get(b"grpc-encoding", b"identity")

    def _on_data(self, direction: int, stream: int, data: bytes) -> None:
        call = self._calls.get(stream)
        if call is None:
            return
        limit = self.limits.max_message_bytes
        try:
            for flag, raw in call.messages(direction, data, limit):
                message = self._inflate(call, direction, flag, raw)
                size = _QUEUED_OVERHEAD + (0 if message is None else len(message))
                if size + call.held() > self.limits.call_budget:
                    raise _Oversized(f"a message of {size} bytes with {call.held()} held, over the call's "
                                     f"{self.limits.call_budget}-byte budget")
                if direction == CLIENT:
                    self._on_request(call, message, size)
                else:
                    self._on_answer(call, message, size)
        except _Oversized as exc:
            del self._calls[stream]
            self.stats.oversized_calls += 1
            logger.info("%s: no longer capturing a %s call: %s (messages up to %d bytes)", self.name, call.method,
                        exc, limit)

    def _inflate(self, call: _Call, direction: int, flag: int, raw: bytes) -> bytes | None:
        """The message, decompressed; None when it cannot be (counted); _Oversized when it inflates too far."""
        if flag == 0:
            return raw
        wbits = _INFLATE_WBITS.get(call.encodings[direction]) if flag == 1 else None
        if wbits is not None:
            inflater = zlib.decompressobj(wbits)
            limit = self.limits.max_message_bytes
            try:
                message = inflater.decompress(raw, limit + 1)  # bounded: a bomb stops at the limit
            except zlib.error:
                message = None
            if message is not None and len(message) > limit:
                raise _Oversized("a message that inflates")
            if message is not None and inflater.eof:
                return message
        self.stats.undecodable_messages += 1
        logger.info("%s: a %s message in encoding %r could not be read", self.name, call.method,
                    call.encodings[direction].decode("ascii", "replace")[:32])
        return None

    def _on_request(self, call: _Call, message: bytes | None, size: int) -> None:
        call.requests_seen += 1
        if call.unary and call.requests_seen > 1:
            return  # the server reads only the first message of a unary call
        call.unanswered.append(message)
        call.queued += size

    def _on_answer(self, call: _Call, message: bytes | None, size: int) -> None:
        if call.unary:
            if not call.answered:
                call.answer, call.answered = message, True
                call.queued += size
            return
        if not call.unanswered:
            return
        request = call.unanswered.popleft()
        call.queued -= _QUEUED_OVERHEAD + (0 if request is None else len(request))
        if request is not None:
            self._sink.offer(call.method, request, message)

    def _on_end_stream(self, direction: int, stream: int) -> None:
        if direction == SERVER:  # DATA that ends the answer: no trailers, so no status
            self._finish(stream, None)

    def _finish(self, stream: int, status: int | None) -> None:
        """The call on ``stream`` ended with ``status`` (None: none arrived): record or count its requests."""
        call = self._calls.pop(stream, None)
        if call is None:
            return
        if call.unary and status == 0 and call.answered and call.unanswered:
            request = call.unanswered[0]
            if request is not None:
                self._sink.offer(call.method, request, call.answer)
            return
        unanswered = sum(request is not None for request in call.unanswered)
        if unanswered:
            self._sink.count_rejected(unanswered)


def _status(value: bytes | None) -> int | None:
    """``grpc-status`` as a number; None when absent or not one."""
    return int(value) if value is not None and value.isdigit() and len(value) < 4 else None
