"""``WireRelay``'s global budget, stepped by hand: chunks handed off as the event loop does, the parser's queue read
when a test says so. What a connection holds must come back to the budget as soon as its capture is given up, and
what readers come to hold as they read (a message inflates) must bring a new weighing, so that the connections a
hostile client gives up are its own, never the honest one that happens to send next."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import pytest
from h2_frames import (
    INFER,
    INFER_STREAM,
    client_start,
    conversation,
    frame,
    message,
    request_headers,
    server_start,
    unary,
)
from relay_helpers import FILLER_TYPE, SteppedRelay, unary_call

from attacker.tap.h2_reader import SERVER
from attacker.tap.reader_limits import ReaderLimits
from attacker.tap.relay_budget import Connection, RelayBudget

KIB = 1024
MIB = 1024 * KIB


def unanswered_stream(*messages: bytes, encoding: str | None = None) -> bytes:
    """A connection's first bytes: one InferStream call whose requests the server has not answered (yet)."""
    client = client_start().headers(1, request_headers(INFER_STREAM, encoding))
    return client.data(1, b"".join(message(body, encoding) for body in messages)).take()


def test_a_connection_given_up_lets_go_of_what_it_held_at_once_not_when_it_closes() -> None:
    """Hostile clients, one after another, each hold 40 KB of requests their server never answers (a client that
    stops reading its answers holds them up), and keep their connection open. Each is given up, the heaviest, when
    the next takes the relay past its 50 KB budget: what it held must leave the budget then. Held until the
    connection closed instead, what the connections given up held piled up past the budget, where the honest
    connection sending next was given up."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=50_000))
    honest = stepped.connect()
    stepped.send(honest, client_start().take())
    for _ in range(4):
        stepped.send(stepped.connect(), unanswered_stream(b"x" * 40_000), piece=4000)
        stepped.parse()
    # the last one's request and HPACK state: the others were given up, and let go of theirs
    assert stepped.held() == 40_064 + stepped.decoding_state()
    stepped.send(honest, frame(FILLER_TYPE, 0, 0, b"h" * 8000))
    assert honest.given_up is None
    stats = stepped.relay.stats()
    assert (stats["evicted_connections"], stats["lost_connections"]) == (3, 3)


def test_what_readers_come_to_hold_as_they_read_brings_a_new_weighing() -> None:
    """After a weighing found room, three hostile clients each send 300 bytes of gzip requests that inflate to
    90 KB held, within that room as counted in bytes queued. The growth must use the room up, so that the next
    chunk weighs the connections again and gives up the hostile ones, the heaviest: unseen, it went on until what
    the relay held was twice its 100 KB budget, where the honest connection sending next was given up."""
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
    assert stepped.held() == 90_192 + stepped.decoding_state()  # one hostile client's: the others were let go of


def test_after_many_connections_and_calls_nothing_is_left_held_or_waiting() -> None:
    """A long uptime, compressed: 300 connections one after another (a few open at once), each with calls answered,
    refused, left unanswered or too large, some given up by the budget on the way and some not HTTP/2 at all. Once
    they have all closed and the parser has read everything, the budget is back to nothing: a byte charged and never
    let go of would, over weeks, leave the relay giving up every connection."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=20_000, max_total_bytes=60_000))
    open_connections: list[Connection] = []
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
                client.request(stream, INFER_STREAM, message(b"q" * 9000) * 2)
            elif kind == 2:  # refused: gRPC retries it elsewhere
                client.request(stream, INFER, message(b"r"), end_stream=True)
                server.rst(stream, code=0x7)
            elif kind == 3:  # over the message limit
                client.request(stream, INFER, message(b"z" * 25_000), end_stream=True)
            else:  # compressed, answered
                client.request(stream, INFER, message(b"\0" * 19_000, "gzip"), "gzip")
                server.answer(stream, message(b"a"))
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


def test_connections_that_inflate_past_the_hard_bound_in_one_batch_are_weighed_not_the_next_sender() -> None:
    """Three hostile clients each queue gzip requests that inflate to 90 KB held, all read in one parser batch: what
    the relay holds jumps from nothing to 270 KB, past twice its 100 KB budget, before the event loop sees it. The
    honest connection sending next must not pay for it (it used to, past that twice, while the hostile ones, now
    silent, kept their capture): the connections are weighed, the heaviest hostile ones given up, and the honest
    call is recorded."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=100_000))
    honest = stepped.connect()
    client, server = client_start(), server_start()
    stepped.send(honest, client.take())
    hostile = [stepped.connect() for _ in range(3)]
    for connection in hostile:
        stepped.send(connection, unanswered_stream(*[b"\x00" * 30_000] * 3, encoding="gzip"))
    stepped.parse()
    assert stepped.held() > 2 * 100_000
    unary(client, server, 1, b"features", b"logits")
    stepped.send(honest, client.take())
    stepped.send(honest, server.take(), direction=SERVER)
    assert honest.given_up is None
    assert sum(connection.given_up is not None for connection in hostile) == 2  # the heaviest, whichever on a tie
    stepped.parse()
    assert stepped.sink.offered == [(INFER, b"features", b"logits")]


class InflatedBytes:
    """``zlib.decompressobj`` counting what every inflater it made returned: the work units of inflating."""

    def __init__(self) -> None:
        self.total = 0
        self._make = zlib.decompressobj

    def __call__(self, wbits: int) -> Any:
        counter, inflater = self, self._make(wbits)

        class Counted:
            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                out = inflater.decompress(data, max_length)
                counter.total += len(out)
                return out

            @property
            def eof(self) -> bool:
                return inflater.eof

        return Counted()


def test_many_connections_each_within_its_own_allowance_cannot_add_their_allowances_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Forty hostile connections each send one gzip bomb inflating to just under its own parse-work allowance (250 KB
    from 300 bytes); an honest connection makes gzip-compressed calls among them. Each allowance is lent from one
    pool (1 MiB here): together the bombs inflate no more than that pool and what every byte on the wire earned (a
    fresh allowance per connection let them inflate 40 allowances, 10 MB). The honest features compress 65x, more
    than their bytes pay for: the honest connection borrows from the pool too, within its fair share, which the
    hostile connections, owing their whole allowance, are refused; its calls are all recorded."""
    inflated = InflatedBytes()
    monkeypatch.setattr(zlib, "decompressobj", inflated)
    limits = ReaderLimits(max_message_bytes=MIB, work_allowance=256 * KIB, max_total_work=MIB)
    stepped = SteppedRelay(limits)
    honest, cloud = stepped.connect(), server_start()
    client = client_start()
    features = [bytes(i % 7 if i % 5 == 0 else 0 for i in range(4096 + n)) for n in range(10)]
    wire = 0
    for n in range(40):
        data = client_start().request(1, INFER, message(b"\x00" * 250_000, "gzip"), "gzip", end_stream=True).take()
        stepped.send(stepped.connect(), data)
        wire += len(data)
        if n % 4 == 0:
            stream = 2 * (n // 4) + 1
            client.request(stream, INFER, message(features[n // 4], "gzip"), "gzip", end_stream=True)
            cloud.answer(stream, message(b"logits"))
            for direction, sent in conversation(client, cloud):
                stepped.send(honest, sent, direction=direction)
                wire += len(sent)
        stepped.parse()
    assert stepped.sink.offered == [(INFER, request, b"logits") for request in features]
    assert honest.given_up is None and not stepped.readers[honest.id].lost
    assert stepped.relay.stats()["overworked_connections"] >= 30
    # a bomb given up inflated one byte past what it could pay
    assert inflated.total <= limits.total_work + (limits.work_per_wire_byte + 1) * wire + 40


def test_a_flood_of_connections_given_up_logs_a_few_warnings_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """Sixty connections given up one after the other by the global budget: a hostile client can cause one warning
    per connection, so only the first few are logged one by one; the rest are summed up when the relay stops (or
    the minute is over)."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=50_000))
    with caplog.at_level(logging.WARNING, logger="attacker.tap.wire_relay"):
        for _ in range(60):
            stepped.send(stepped.connect(), client_start().raw(frame(FILLER_TYPE, 0, 0, b"f" * 60_000)).take())
        stepped.relay._give_up_log.flush()
    lines = [record.getMessage() for record in caplog.records if record.name == "attacker.tap.wire_relay"]
    assert stepped.relay.stats()["evicted_connections"] == 60
    assert len(lines) == 11 and lines[-1].startswith("50 more connections given up")


def test_a_backlog_over_the_budget_gives_up_each_sender_unweighed_until_the_parser_has_read_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the weighing that gave up two of three hostile clients (270 KB held, a 100 KB budget), what those two
    still hold (180 KB) is more than the budget until the parser reads their release. A sender past the room that
    weighing found is given up once a weighing has measured that backlog, and each sender after it without another
    weighing (O(1) per chunk), until the parser has read as far; then weighing resumes."""
    weighings = []
    make_room = RelayBudget._make_room

    def counted(budget: RelayBudget, incoming: Connection, size: int) -> bool:
        weighings.append(incoming.id)
        return make_room(budget, incoming, size)

    monkeypatch.setattr(RelayBudget, "_make_room", counted)
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=100_000))
    senders = [stepped.connect() for _ in range(4)]
    for connection in senders:
        stepped.send(connection, client_start().take())
    hostile = [stepped.connect() for _ in range(3)]
    for connection in hostile:
        stepped.send(connection, unanswered_stream(*[b"\x00" * 30_000] * 3, encoding="gzip"))
    stepped.parse()
    stepped.send(senders[0], frame(FILLER_TYPE, 0, 0, b"f" * 1000))  # weighed: two hostile clients given up
    assert senders[0].given_up is None and sum(c.given_up is not None for c in hostile) == 2
    stepped.send(senders[0], frame(FILLER_TYPE, 0, 0, b"f" * 20_000))  # past the room: the backlog is measured
    stepped.send(senders[1], frame(FILLER_TYPE, 0, 0, b"f" * 1000))
    stepped.send(senders[2], frame(FILLER_TYPE, 0, 0, b"f" * 1000))
    assert [connection.given_up is not None for connection in senders] == [True, True, True, False]
    assert len(weighings) == 2
    stepped.parse()
    stepped.send(senders[3], frame(FILLER_TYPE, 0, 0, b"f" * 20_000))  # weighed again: the last hostile one goes
    assert senders[3].given_up is None and all(connection.given_up is not None for connection in hostile)
    assert len(weighings) == 3


def test_past_half_the_budget_the_backlog_of_connections_given_up_is_skipped_unread() -> None:
    """What connections given up still have queued is read, so that calls they had answered before are recorded,
    until that backlog passes half the budget: from the weighing that finds it there, the parser counts it read
    without parsing it. A backlog that size is most often a hostile client's, heavy to parse by design; read, it kept
    the parser busy, the backlog over the budget and every honest sender in the meantime given up."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=100_000))
    honest, first, second = stepped.connect(), stepped.connect(), stepped.connect()
    stepped.send(honest, client_start().take())
    for connection, size in ((first, 60_000), (second, 40_000)):  # the second's request weighs: ``first`` goes
        request, answer = unary_call(1, b"q" * size, b"a")
        stepped.send(connection, request)
        stepped.send(connection, answer, direction=SERVER)
    assert first.given_up is not None and not first.discard and second.given_up is None
    stepped.send(second, frame(FILLER_TYPE, 0, 0, b"f" * 65_000))  # weighs: a 60 KB backlog, and ``second`` goes
    assert first.discard and second.given_up is not None and not second.discard and honest.given_up is None
    stepped.parse()
    assert [len(payload) for _, payload, _ in stepped.sink.offered] == [40_000]  # the second's call only
    assert stepped.held() == stepped.decoding_state() and stepped.readers[first.id].lost
    stats = stepped.relay.stats()
    assert (stats["evicted_connections"], stats["discarded_connections"], stats["lost_connections"]) == (2, 1, 2)
    stepped.send(honest, frame(FILLER_TYPE, 0, 0, b"h" * 90_000))
    assert honest.given_up is None


def test_only_what_connections_given_up_still_hold_decides_a_discard_not_closed_or_discarded_ones() -> None:
    """A review's two cases. Closed honest connections' unread chunks, and a backlog already discarded but not yet
    read, are not the backlog of the connection given up next: counted as if they were, a small honest connection
    given up (its answered call still queued) was discarded for other connections' bytes, and lost that call."""
    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=100_000))
    small = stepped.connect()
    request, answer = unary_call(1, b"s" * 20_000, b"a")
    stepped.send(small, request)
    stepped.send(small, answer, direction=SERVER)
    fillers = [stepped.connect() for _ in range(4)]
    for connection in fillers:
        stepped.send(connection, frame(FILLER_TYPE, 0, 0, b"f" * 19_000))
    stepped.send(stepped.connect(), frame(FILLER_TYPE, 0, 0, b"x" * 19_000))  # weighs: ``small``, the heaviest, goes
    assert small.given_up is not None
    for connection in fillers[:2]:
        stepped.close(connection)  # 38 KB of theirs not read yet
    honest = stepped.connect()
    request, answer = unary_call(1, b"h" * 30_000, b"a")
    stepped.send(honest, request)  # weighs: 58 KB not read, only 20 KB of it ``small``'s
    stepped.send(honest, answer, direction=SERVER)
    assert not small.discard
    stepped.parse()
    assert sorted(len(payload) for _, payload, _ in stepped.sink.offered) == [20_000, 30_000]

    stepped = SteppedRelay(ReaderLimits(max_message_bytes=100_000, max_total_bytes=100_000))
    hostile, honest, c, d, e = (stepped.connect() for _ in range(5))
    for connection in (honest, c, d, e):
        stepped.send(connection, client_start().take())
    stepped.send(hostile, client_start().take() + frame(FILLER_TYPE, 0, 0, b"h" * 55_000))
    stepped.send(c, frame(FILLER_TYPE, 0, 0, b"c" * 20_000))
    stepped.send(d, frame(FILLER_TYPE, 0, 0, b"d" * 30_000))  # weighs: ``hostile`` goes
    request, answer = unary_call(1, b"b" * 40_000, b"a")
    stepped.send(honest, request[len(client_start().take()):])
    stepped.send(honest, answer, direction=SERVER)
    stepped.send(c, frame(FILLER_TYPE, 0, 0, b"c" * 15_000))  # weighs: ``hostile`` discarded, ``honest`` goes
    assert hostile.discard and honest.given_up is not None
    for _ in range(4):  # weighs again before the parser has read the discarded 55 KB
        stepped.send(e, frame(FILLER_TYPE, 0, 0, b"e" * 10_000))
    assert not honest.discard
    stepped.parse()
    assert [len(payload) for _, payload, _ in stepped.sink.offered] == [40_000]
