"""HTTP/2 conversations built by hand (struct and ``hpack.Encoder``), to feed ``attacker.tap.h2_reader``, and what
the reader offered, read back (``Sink``, ``read``)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field

import hpack

from attacker.tap.h2_reader import (
    ACK,
    CLIENT,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SERVER,
    SETTINGS,
    H2Reader,
)
from attacker.tap.reader_limits import ReaderLimits, ReaderStats

INFER = "/cem.split.v1.SplitInference/Infer"
INFER_STREAM = "/cem.split.v1.SplitInference/InferStream"
MODEL_INFO = "/cem.split.v1.SplitInference/GetModelInfo"
COMPRESSORS = {"gzip": gzip.compress, "deflate": zlib.compress}
Header = tuple[str, str] | tuple[str, str, bool]  # (name, value, True): sensitive, never indexed


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def message(body: bytes, encoding: str | None = None) -> bytes:
    """gRPC's length-prefixed message, compressed with ``encoding`` when given."""
    if encoding is not None:
        body = COMPRESSORS[encoding](body)
    return bytes([encoding is not None]) + len(body).to_bytes(4, "big") + body


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in pairs))


SETTINGS_ACK = frame(SETTINGS, ACK, 0, b"")


@dataclass
class Peer:
    """One endpoint's side of a connection: its HPACK encoder and the bytes it sent so far."""

    encoder: hpack.Encoder = field(default_factory=hpack.Encoder)
    sent: bytearray = field(default_factory=bytearray)

    def headers(self, stream: int, headers: list[Header], *, end_stream: bool = False, pad: int = 0,
                priority: bool = False, pieces: int = 1) -> Peer:
        """A header block as HEADERS (padded/with priority on request) and ``pieces - 1`` CONTINUATION frames."""
        block = self.encoder.encode(headers)
        step = -(-len(block) // pieces) if block else 1
        parts = [block[i:i + step] for i in range(0, len(block), step)] or [b""]
        parts += [b""] * (pieces - len(parts))
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if pieces == 1 else 0)
        first = parts[0]
        if priority:
            flags |= PRIORITY
            first = b"\x00\x00\x00\x00\x10" + first
        if pad:
            flags |= PADDED
            first = bytes([pad]) + first + b"\x00" * pad
        self.sent += frame(HEADERS, flags, stream, first)
        for i, part in enumerate(parts[1:], start=2):
            self.sent += frame(CONTINUATION, END_HEADERS if i == pieces else 0, stream, part)
        return self

    def data(self, stream: int, payload: bytes, *, end_stream: bool = False, pad: int = 0) -> Peer:
        flags = END_STREAM if end_stream else 0
        if pad:
            flags |= PADDED
            payload = bytes([pad]) + payload + b"\x00" * pad
        self.sent += frame(DATA, flags, stream, payload)
        return self

    def request(self, stream: int, method: str, data: bytes, encoding: str | None = None, *,
                end_stream: bool = False, extra: list[Header] | None = None) -> Peer:
        """A call opened on ``stream``: its request headers, then ``data`` (framed messages) in one DATA frame."""
        return self.headers(stream, request_headers(method, encoding, extra)).data(stream, data, end_stream=end_stream)

    def answer(self, stream: int, data: bytes, encoding: str | None = None, *, status: int | None = 0) -> Peer:
        """The answer on ``stream``: its headers and ``data`` (framed messages), ended by trailers with ``status``
        (None: by the DATA frame, no status at all)."""
        self.headers(stream, response_headers(encoding)).data(stream, data, end_stream=status is None)
        return self if status is None else self.headers(stream, trailers(status), end_stream=True)

    def raw(self, data: bytes) -> Peer:
        self.sent += data
        return self

    def rst(self, stream: int, code: int = 8) -> Peer:
        return self.raw(frame(RST_STREAM, 0, stream, code.to_bytes(4, "big")))

    def goaway(self, last_stream: int) -> Peer:
        return self.raw(frame(GOAWAY, 0, 0, last_stream.to_bytes(4, "big") + b"\x00\x00\x00\x00"))

    def take(self) -> bytes:
        data = bytes(self.sent)
        self.sent.clear()
        return data


def request_headers(method: str, encoding: str | None = None,
                    extra: list[Header] | None = None) -> list[Header]:
    headers: list[Header] = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "127.0.0.1"),
                             ("content-type", "application/grpc"), ("te", "trailers")]
    if encoding is not None:
        headers.append(("grpc-encoding", encoding))
    return headers + (extra or [])


def response_headers(encoding: str | None = None) -> list[Header]:
    headers: list[Header] = [(":status", "200"), ("content-type", "application/grpc")]
    return headers + ([("grpc-encoding", encoding)] if encoding is not None else [])


def trailers(status: int = 0) -> list[Header]:
    return [("grpc-status", str(status)), *([("grpc-message", "refused")] if status else [])]


def client_start() -> Peer:
    return Peer().raw(PREFACE + settings())


def server_start() -> Peer:
    return Peer().raw(settings((0x3, 100)))


def unary(client: Peer, server: Peer, stream: int, request: bytes, answer: bytes, status: int = 0,
          method: str = INFER) -> None:
    """One whole unary call: request headers and message, answer headers, message and trailers."""
    client.request(stream, method, message(request), end_stream=True)
    if status == 0:
        server.answer(stream, message(answer))
    else:
        server.headers(stream, response_headers()).headers(stream, trailers(status), end_stream=True)


Offer = tuple[str, bytes, "bytes | None"]


@dataclass
class Sink:
    """What the reader hands the recorder."""

    offered: list[Offer] = field(default_factory=list)
    rejected: int = 0

    def offer(self, method: str, payload: bytes, response: bytes | None = None) -> bool:
        self.offered.append((method, payload, response))
        return True

    def count_rejected(self, requests: int = 1) -> None:
        self.rejected += requests


def read(exchanges: list[tuple[int, bytes]], limits: ReaderLimits | None = None, step: int | None = None,
         close: bool = True, stats: ReaderStats | None = None) -> tuple[Sink, H2Reader]:
    """Feed (direction, bytes) in order, each in pieces of ``step`` bytes (whole when None)."""
    sink = Sink()
    reader = H2Reader(sink, limits, stats)
    for direction, data in exchanges:
        size = step or max(1, len(data))
        for i in range(0, len(data), size):
            reader.feed(direction, data[i:i + size])
    if close:
        reader.close()
    return sink, reader


def decoding_state(reader: H2Reader) -> int:
    """What the reader's HPACK state holds (both tables, both decoded-block caches): part of ``held()``."""
    return sum(side.table.size() + side.cache_bytes for side in reader._sides)


def conversation(client: Peer, server: Peer) -> list[tuple[int, bytes]]:
    """What both peers sent so far, the client's first (as ``read`` takes it)."""
    return [(CLIENT, client.take()), (SERVER, server.take())]
