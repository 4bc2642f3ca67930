"""``WireRelay``'s global budget, stepped by hand: chunks handed off as the event loop does, the parser's queue read
when a test says so. What a connection holds must come back to the budget as soon as its capture is given up, and
what readers come to hold as they read (a message inflates) must bring a new weighing, so that the connections a
hostile client gives up are its own, never the honest one that happens to send next."""

from __future__ import annotations

import queue

from h2_frames import (
    INFER,
    INFER_STREAM,
    Sink,
    client_start,
    conversation,
    frame,
    message,
    request_headers,
    response_headers,
    server_start,
    trailers,
    unary,
)

from attacker.tap.h2_reader import CLIENT, H2Reader
from attacker.tap.reader_limits import ReaderLimits
from attacker.tap.wire_relay import WireRelay, _Connection

FILLER_TYPE = 0xFA  # a frame type readers skip


class _Pair:
    """What the relay's budget reads of a relayed connection, without its sockets."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection


class SteppedRelay:
    """A relay never started: ``send`` is a leg's ``data_received`` past the write, ``parse`` the parser thread
    reading all that is queued."""

    def __init__(self, limits: ReaderLimits) -> None:
        self.relay = WireRelay("127.0.0.1:0", "127.0.0.1:1", Sink(), limits=limits)
        self.readers: dict[int, H2Reader] = {}
        self._pairs: dict[int, _Pair] = {}

    def connect(self) -> _Connection:
        connection = _Connection(len(self._pairs) + 1)
        self._pairs[connection.id] = _Pair(connection)
        self.relay._pairs.add(self._pairs[connection.id])
        return connection

    def close(self, connection: _Connection) -> None:
        self.relay._pairs.discard(self._pairs[connection.id])
        self.relay._hand_off_close(connection)

    def send(self, connection: _Connection, data: bytes, piece: int | None = None, direction: int = CLIENT) -> None:
        """``data`` from ``direction``, in chunks of ``piece`` bytes (one chunk when None)."""
        piece = piece or len(data)
        for start in range(0, len(data), piece):
            self.relay._hand_off(connection, direction, data[start:start + piece])

    def parse(self) -> None:
        while True:
            try:
                item = self.relay._queue.get_nowait()
            except queue.Empty:
                return
            assert item is not None
            self.relay._parse_chunk(self.readers, *item)

    def held(self) -> int:
        return self.relay._held_bytes

    def waiting(self) -> tuple[int, int]:
        """Bytes and chunks queued and not yet read, as the relay counts them."""
        relay = self.relay
        return relay._queued_bytes - relay._parsed_bytes, relay._queued_chunks - relay._parsed_chunks


def unanswered_stream(*messages: bytes, encoding: str | None = None) -> bytes:
    """A connection's first bytes: one InferStream call whose requests the server has not answered (yet)."""
    client = client_start().headers(1, request_headers(INFER_STREAM, encoding))
    return client.data(1, b"".join(message(body, encoding) for body in messages)).take()


def test_a_connection_given_up_lets_go_of_what_it_held_at_once_not_when_it_closes() -> None:
    """Hostile clients, one after another, each hold 40 KB of requests their server never answers (a client that
    stops reading its answers holds them up), and keep their connection open. Each is given up, the heaviest, when
    the next takes the relay past its 50 KB budget: what it held must leave the budget then. Held until the
    connection closed instead, it piled up to the hard bound (twice the budget), where the honest connection
    sending next was given up."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=50_000))
    honest = stepped.connect()
    stepped.send(honest, client_start().take())
    for _ in range(4):
        stepped.send(stepped.connect(), unanswered_stream(b"x" * 40_000), piece=4000)
        stepped.parse()
    assert stepped.held() == 40_064  # the last one's request: the others were given up, and let go of theirs
    stepped.send(honest, frame(FILLER_TYPE, 0, 0, b"h" * 8000))
    assert honest.given_up is None
    stats = stepped.relay.stats()
    assert (stats["evicted_connections"], stats["lost_connections"]) == (3, 3)


def test_what_readers_come_to_hold_as_they_read_brings_a_new_weighing() -> None:
    """After a weighing found room, three hostile clients each send 300 bytes of gzip requests that inflate to
    90 KB held, within that room as counted in bytes queued. The growth must use the room up, so that the next
    chunk weighs the connections again and gives up the hostile ones, the heaviest: unseen, it took the relay past
    its hard bound (twice its 100 KB budget), where the honest connection sending next was given up."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=100_000))
    honest, first = stepped.connect(), stepped.connect()
    stepped.send(honest, client_start().take())
    stepped.send(first, unanswered_stream(b"x" * 60_000))
    stepped.parse()
    stepped.send(honest, frame(FILLER_TYPE, 0, 0, b"h" * 50_000))  # over the budget: ``first`` is given up
    assert first.given_up is not None and honest.given_up is None
    stepped.parse()
    hostile = []
    for _ in range(3):
        connection = stepped.connect()
        hostile.append(connection)
        stepped.send(connection, unanswered_stream(*[b"\x00" * 30_000] * 3, encoding="gzip"))
        stepped.parse()
        stepped.send(honest, frame(FILLER_TYPE, 0, 0, b"h" * 1000))
        assert honest.given_up is None
    assert sum(connection.given_up is not None for connection in hostile) == 2  # the heaviest, whichever on a tie
    stepped.parse()
    assert stepped.held() == 90_192  # one hostile client's requests: the others were let go of


def test_after_many_connections_and_calls_nothing_is_left_held_or_waiting() -> None:
    """A long uptime, compressed: 300 connections one after another (a few open at once), each with calls answered,
    refused, left unanswered or too large, some given up by the budget on the way and some not HTTP/2 at all. Once
    they have all closed and the parser has read everything, the budget is back to nothing: a byte charged and never
    let go of would, over weeks, leave the relay giving up every connection."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=20_000, max_total_bytes=60_000))
    open_connections: list[_Connection] = []
    for i in range(300):
        connection = stepped.connect()
        client, server = client_start(), server_start()
        if i % 7 == 6:
            client.raw(b"GET / HTTP/1.1\r\n\r\n" * 4)
        for stream in (1, 3, 5):
            kind = (i + stream) % 5
            if kind == 0:
                unary(client, server, stream, b"f" * (1000 * (i % 15)), b"a" * 100)
            elif kind == 1:  # unanswered: held until the connection closes
                client.headers(stream, request_headers(INFER_STREAM)).data(stream, message(b"q" * 9000) * 2)
            elif kind == 2:  # refused: gRPC retries it elsewhere
                client.headers(stream, request_headers(INFER)).data(stream, message(b"r"), end_stream=True)
                server.rst(stream, code=0x7)
            elif kind == 3:  # over the message limit
                client.headers(stream, request_headers(INFER)).data(stream, message(b"z" * 25_000), end_stream=True)
            else:  # compressed, answered
                client.headers(stream, request_headers(INFER, "gzip")).data(stream, message(b"\0" * 19_000, "gzip"))
                server.headers(stream, response_headers()).data(stream, message(b"a"))
                server.headers(stream, trailers(), end_stream=True)
        for direction, data in conversation(client, server):
            stepped.send(connection, data, piece=1000 + 700 * (i % 9), direction=direction)
            if i % 3:
                stepped.parse()
        open_connections.append(connection)
        if len(open_connections) > 4:
            stepped.close(open_connections.pop(i % 4))
    for connection in open_connections:
        stepped.close(connection)
    stepped.parse()
    stats = stepped.relay.stats()
    assert stats["evicted_connections"] > 0 and stats["oversized_calls"] > 0 and stats["refused_calls"] > 0
    assert (stepped.held(), stepped.waiting(), stepped.readers) == (0, (0, 0), {})
