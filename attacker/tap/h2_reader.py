"""Reading the gRPC calls off a copy of one HTTP/2 connection's bytes, for the relay tap.

The relay (``attacker.tap.wire_relay``) forwards a connection's bytes untouched
and hands a copy of every chunk, in order, to one ``H2Reader`` per connection.
This module reads what HTTP/2 carries (RFC 9113 frames, RFC 7541 HPACK header
blocks) and tells ``attacker.tap.grpc_calls`` what each stream carried, which
rebuilds the gRPC calls and pairs their requests with their answers.

No sockets and no clock, so it is tested on frames built by hand. Every header
block of both directions is decoded in order, those of calls it does not capture
too, because HPACK's dynamic table is shared by the whole connection. Each
direction's decoder allows the table size the endpoint that decodes it announced
in SETTINGS_HEADER_TABLE_SIZE (the last one acknowledged, or a larger one still
waiting for its ACK, as an encoder may not have seen the new size yet), up to a
cap, and follows the table size updates in the blocks. Hostile bytes never
raise out of it and cannot grow it without bound:

- any framing, HPACK or protocol error (server push included: gRPC never uses
  it), and bytes that are not HTTP/2 at all, make the connection *lost*: counted
  once, logged once, its further bytes ignored (the relay still forwards them);
- the connection is lost too once its calls, buffered frames and HPACK state
  (both tables, the decoded-block cache) hold more than its budget
  (``over_budget_connections``), or it causes more parse work (inflating,
  decoding header blocks) than its bytes on the wire pay for
  (``overworked_connections``; ``attacker.tap.parse_work``): decoding stops at
  the first header field it cannot pay for;
- captured calls beyond ``max_streams`` open at once on one connection are not
  followed (``streams_ignored``); header blocks are capped, encoded and decoded,
  and so is the HPACK table a peer may ask for.
"""

from __future__ import annotations

import logging
import struct
from collections import deque

from hpack import Decoder, HPACKError
from hpack.struct import HeaderTuple
from hpack.table import HeaderTable

from attacker.tap.grpc_calls import CLIENT, SERVER, CallSink, GrpcCalls
from attacker.tap.parse_work import WorkBudget, WorkPool
from attacker.tap.reader_limits import (
    DECODED_BLOCK_CACHE_BYTES,
    HEADER_BYTE_WORK,
    HEADER_FIELD_WORK,
    GiveUp,
    OverBudget,
    Overworked,
    ReaderLimits,
    ReaderStats,
)
from cem.logs import LimitedWarnings

logger = logging.getLogger(__name__)

__all__ = ["ACK", "CLIENT", "CONTINUATION", "DATA", "END_HEADERS", "END_STREAM", "GOAWAY", "HEADERS", "PADDED",
           "PREFACE", "PRIORITY", "PUSH_PROMISE", "REFUSED_STREAM", "RST_STREAM", "SERVER", "SETTINGS",
           "SETTINGS_HEADER_TABLE_SIZE", "H2Reader", "lost_log"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x5, 0x7, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE = 0x1
DEFAULT_HEADER_TABLE_SIZE = 4096  # what every HPACK decoder allows until its endpoint announces otherwise
REFUSED_STREAM = 0x7  # RST_STREAM's code for a stream the server did not process (gRPC retries it)
_FRAME_HEADER = struct.Struct(">HBBBI")  # a 24-bit length as 16 + 8 bits, type, flags, stream id
_MAX_CONTROL_FRAME = 16 * 1024  # SETTINGS, RST_STREAM and GOAWAY frames are read whole; gRPC's are a few bytes
_MAX_UNACKED_SETTINGS = 32  # SETTINGS frames waiting for their ACK; gRPC has one or two at a time
# Decoded header blocks kept per direction: gRPC repeats the same few byte-identical blocks call after call. A block
# is kept when it and its headers are small; all kept, counted with a per-entry overhead (the dict, the key), stay
# within DECODED_BLOCK_CACHE_BYTES (emptied when the next would not fit).
_CACHE_BLOCK_BYTES, _CACHE_HEADER_BYTES, _CACHE_ENTRY_OVERHEAD = 512, 4096, 256
_LOST_LIMITS = ReaderLimits(max_header_block_bytes=1, max_header_table_bytes=1)  # the sides of a lost connection


class _Lost(GiveUp):
    """The connection can no longer be followed."""


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

    def size(self) -> int:
        """What its entries hold, as HPACK counts it (32 bytes of overhead each), kept by hpack as they change."""
        return self._current_size


class _Decoder(Decoder):
    """hpack's decoder, with two changes through its private methods (hence ``hpack>=4,<5``, and a test that fails
    once they are gone):

    - no check that the encoder shrank its table once the allowed size dropped. A table larger than the encoder's
      decodes the same (entries are named from the newest), and a reader that only follows must not give up a
      connection its endpoints keep using; a size update above the allowed size is still refused, as the endpoint
      refuses it;
    - at most ``field_limit`` fields a block (``Overworked`` at the next): fields are what decoding costs, and how
      many a block holds is known only once it is decoded, too late to refuse work the connection cannot pay for.
    """

    field_limit = 0
    fields = 0

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        self.fields = 0
        return list(super().decode(data, raw))

    def _assert_valid_table_size(self) -> None:
        return

    def _decode_indexed(self, data: bytes | memoryview) -> tuple[HeaderTuple, int]:
        self._count_field()
        return super()._decode_indexed(data)

    def _decode_literal(self, data: bytes | memoryview, should_index: bool) -> tuple[HeaderTuple, int]:
        self._count_field()
        return super()._decode_literal(data, should_index)

    def _count_field(self) -> None:
        self.fields += 1
        if self.fields > self.field_limit:
            raise Overworked(f"decoding header fields: its work pays for {self.field_limit} in this block")


class _Side:
    """The frame reader's state for one direction of the connection, and the HPACK decoder of its blocks."""

    __slots__ = ("block", "block_end_stream", "block_stream", "block_work", "buffer", "cache", "cache_bytes",
                 "data_end_stream", "data_left", "data_stream", "decoder", "in_data", "pad", "preface_left", "skip",
                 "table", "table_acked", "table_cap", "table_pending")

    def __init__(self, preface: bool, limits: ReaderLimits) -> None:
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
        self.block_work = 0  # what its frames pay towards decoding it (``WorkBudget.block_allowance``)
        self.decoder = _Decoder(max_header_list_size=limits.max_header_block_bytes)
        self.table = self.decoder.header_table = _CountingTable()
        # SETTINGS_HEADER_TABLE_SIZE of the endpoint decoding this direction: acknowledged, and announced since
        # (in order, None for a SETTINGS frame without it), each acknowledged by the next ACK of this direction
        self.table_acked = DEFAULT_HEADER_TABLE_SIZE
        self.table_pending: deque[int | None] = deque()
        self.table_cap = limits.max_header_table_bytes
        self.cache: dict[tuple[bytes, int, int, int, int], dict[bytes, bytes]] = {}
        self.cache_bytes = 0

    def held(self) -> int:
        """Its partial frames, its HPACK table and its decoded-block cache."""
        return len(self.buffer) + (0 if self.block is None else len(self.block)) + self.table.size() + self.cache_bytes

    def announced(self, size: int | None) -> None:
        """The endpoint decoding this direction sent SETTINGS (``size``: its header table size, if named)."""
        if len(self.table_pending) >= _MAX_UNACKED_SETTINGS:
            raise _Lost(f"over {_MAX_UNACKED_SETTINGS} SETTINGS frames unacknowledged")
        self.table_pending.append(size)
        self._allow()

    def acknowledged(self) -> None:
        """This direction's endpoint acknowledged the oldest SETTINGS of the other."""
        if self.table_pending:
            size = self.table_pending.popleft()
            if size is not None:
                self.table_acked = size
            self._allow()

    def _allow(self) -> None:
        """The decoder allows the acknowledged size, or a larger one still waiting for its ACK (the encoder may
        have seen it already), within the cap."""
        sizes = [self.table_acked, *(size for size in self.table_pending if size is not None)]
        self.decoder.max_allowed_table_size = min(max(sizes), self.table_cap)

    def decode(self, block: bytes, work: WorkBudget) -> dict[bytes, bytes]:
        """The headers of the next header block of this direction; decoding is paid for by the block's own frames
        (``block_work``), then from ``work``, and stops at the first field that cannot be paid for.

        A block that left the table as it found it decodes the same whenever the table is in that state again
        (and allows the same size), so it is kept: pure-Python HPACK was most of the reader's time, and gRPC's
        blocks repeat once its table is warm (three byte-identical blocks per unary call).
        """
        state = self.table.state()
        key = (block, *state, self.decoder.max_allowed_table_size)
        headers = self.cache.get(key)
        if headers is None:
            free = work.spend(HEADER_BYTE_WORK * len(block), "decoding header blocks", self.block_work)
            self.decoder.field_limit = work.fields_payable(free)
            fields = self.decoder.decode(block, raw=True)
            work.spend(HEADER_FIELD_WORK * len(fields), "decoding header fields", free)
            headers = dict(fields)
            if self.table.state() == state and len(block) <= _CACHE_BLOCK_BYTES:
                self._keep(key, headers)
        return headers

    def _keep(self, key: tuple[bytes, int, int, int, int], headers: dict[bytes, bytes]) -> None:
        """Cache a decoded block, within ``DECODED_BLOCK_CACHE_BYTES``: counted in ``held`` like any byte it keeps."""
        header_bytes = sum(len(name) + len(value) for name, value in headers.items())
        if header_bytes > _CACHE_HEADER_BYTES:
            return
        size = _CACHE_ENTRY_OVERHEAD + len(key[0]) + header_bytes
        if self.cache_bytes + size > DECODED_BLOCK_CACHE_BYTES:
            self.cache.clear()
            self.cache_bytes = 0
        self.cache[key] = headers
        self.cache_bytes += size


def lost_log() -> LimitedWarnings:
    """The readers' one warning, that a connection is no longer captured, rate-limited: share one among readers."""
    return LimitedWarnings(logger, "connections no longer captured by their reader")


class H2Reader:
    """The gRPC calls of one connection, from the bytes of its two directions fed in order (``CLIENT``/``SERVER``)."""

    def __init__(self, sink: CallSink, limits: ReaderLimits | None = None, stats: ReaderStats | None = None,
                 name: str = "connection", pool: WorkPool | None = None, log: LimitedWarnings | None = None) -> None:
        """``stats``, ``pool`` and ``log`` are shared by every reader of one relay (its counters, the pool their
        parse-work allowances are lent from, its warnings); a reader alone gets its own."""
        self.limits = limits or ReaderLimits()
        self.stats = stats if stats is not None else ReaderStats()
        self.name = name  # for log lines
        self.lost = False
        self._log = log if log is not None else lost_log()
        self._work = WorkBudget(self.limits, pool if pool is not None else WorkPool(self.limits))
        self._sides = (_Side(True, self.limits), _Side(False, self.limits))
        self._calls = GrpcCalls(sink, self.limits, self.stats, self._work, name)
        self._last_client_stream = 0

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def held(self) -> int:
        """Bytes this reader holds: its calls' messages, the partial frames it buffered, its HPACK tables and its
        decoded-block caches."""
        return self._calls.held + self._sides[CLIENT].held() + self._sides[SERVER].held()

    def feed(self, direction: int, data: bytes) -> None:
        """The next bytes ``direction`` sent; never raises on what they hold."""
        if self.lost or not data:
            return
        side = self._sides[direction]
        side.buffer += data
        try:
            consumed = self._read_frames(direction, side)
            del side.buffer[:consumed]
            self._check_budget(self.held())
        except GiveUp as exc:
            self.lose(str(exc), exc.counter)
        except HPACKError as exc:  # its messages may quote the block: only the kind is logged
            self.lose(f"HPACK: {type(exc).__name__}")

    def close(self) -> None:
        """The connection closed: every call still open ends unanswered."""
        self._work.retire()
        self._calls.close()

    def lose(self, reason: str, counter: str | None = None) -> None:
        """Stop following this connection (its bytes still flow); counted (in ``lost_connections`` and in
        ``counter``, a ``ReaderStats`` field, when given) and logged once."""
        if self.lost:
            return
        self.lost = True
        self.stats.lost_connections += 1
        if counter is not None:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self._work.retire()
        self._calls.clear()
        self._sides = (_Side(False, _LOST_LIMITS), _Side(False, _LOST_LIMITS))  # drop the buffers and tables
        self._log.warning("%s: no longer captured (%s); its bytes still flow", self.name, reason)

    def _check_budget(self, held: int) -> None:
        if held > self.limits.connection_budget:
            raise OverBudget(f"its calls and buffers hold {held} bytes, over the connection's "
                             f"{self.limits.connection_budget}-byte budget")

    def _read_frames(self, direction: int, side: _Side) -> int:
        """Consume what ``side.buffer`` holds; returns how many bytes were read.

        The bytes read pay for parse work (``WorkBudget.earn``) up to each frame that causes some, so that work is
        paid for by the frames before it, not by those that follow in the same chunk.
        """
        buf, pos, end = side.buffer, 0, len(side.buffer)
        earned = 0
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
                        self._work.earn(pos + take - earned)
                        earned = pos + take
                        self._calls.data(direction, side.data_stream, bytes(buf[pos:pos + take]))
                        self._check_budget(self._calls.held)  # the chunk in the buffer is not held yet
                    side.data_left -= take
                    pos += take
                if side.data_left:
                    break
                side.in_data, side.skip = False, side.pad
                if side.data_end_stream and direction == SERVER:  # DATA ending the answer: no trailers, no status
                    self._calls.finish(side.data_stream, None)
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
                    self._work.earn(pos + 9 + length - earned)
                    earned = pos + 9 + length
                    self._on_frame(direction, side, kind, flags, stream, bytes(buf[pos + 9:pos + 9 + length]))
                    pos += 9 + length
                else:  # PING, PRIORITY, WINDOW_UPDATE and unknown types: nothing a capture needs
                    side.skip = length
                    pos += 9
        self._work.earn(pos - earned)
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
            side.block_work = self._work.block_allowance(9 + len(payload))
        elif kind == CONTINUATION:
            if side.block is None:
                raise _Lost("CONTINUATION without HEADERS")
            side.block += payload
            side.block_work += self._work.block_allowance(9 + len(payload))
            if len(side.block) > self.limits.max_header_block_bytes:
                raise _Lost(f"a header block over {self.limits.max_header_block_bytes} bytes")
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise _Lost("RST_STREAM of the wrong size")
            if direction == SERVER and int.from_bytes(payload, "big") == REFUSED_STREAM:
                self._calls.refuse(stream)
            else:
                self._calls.finish(stream, None)
        elif kind == SETTINGS:
            self._on_settings(direction, flags, payload)
        elif kind == GOAWAY:
            if len(payload) < 8:
                raise _Lost("GOAWAY too short")
            if direction == SERVER:  # calls above its last stream id were never processed
                self._calls.refuse_above(int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
        else:
            raise _Lost("server push, which gRPC never uses")
        if kind in (HEADERS, CONTINUATION) and flags & END_HEADERS:
            block, side.block = side.block, None
            assert block is not None
            headers = side.decode(bytes(block), self._work)
            self._on_headers(direction, side.block_stream, side.block_end_stream, headers)

    def _on_settings(self, direction: int, flags: int, payload: bytes) -> None:
        """SETTINGS from ``direction`` announce the table its decoder allows for the other direction's blocks; its
        ACK acknowledges the other direction's oldest SETTINGS, whose size then bounds this direction's blocks."""
        if flags & ACK:
            if payload:
                raise _Lost("a SETTINGS ACK with a payload")
            self._sides[direction].acknowledged()
            return
        if len(payload) % 6:
            raise _Lost("SETTINGS of the wrong size")
        size = None
        for offset in range(0, len(payload), 6):
            if int.from_bytes(payload[offset:offset + 2], "big") == SETTINGS_HEADER_TABLE_SIZE:
                size = int.from_bytes(payload[offset + 2:offset + 6], "big")  # the last one counts
        self._sides[SERVER if direction == CLIENT else CLIENT].announced(size)

    def _on_headers(self, direction: int, stream: int, end_stream: bool, headers: dict[bytes, bytes]) -> None:
        if direction == SERVER:
            self._calls.answer_headers(stream, headers, end_stream)
            return
        if stream <= self._last_client_stream or not stream % 2:
            return  # trailers of a call (gRPC sends none), or a stream id the server will refuse
        self._last_client_stream = stream
        self._calls.open(stream, headers)
