"""The relay tap reader's per-connection budgets (``attacker.tap.reader_limits``): the bytes all of a connection's
calls hold, and the parse work its bytes on the wire pay for. Past either, that connection alone is given up."""

from __future__ import annotations

import gzip
import random

from h2_frames import (
    INFER,
    INFER_STREAM,
    client_start,
    conversation,
    frame,
    message,
    read,
    request_headers,
    response_headers,
    server_start,
    trailers,
    unary,
)

from attacker.tap.h2_reader import CLIENT, END_HEADERS, END_STREAM, HEADERS
from attacker.tap.reader_limits import ReaderLimits

MIB = 1024 * 1024


def test_calls_each_within_their_budget_but_together_over_the_connections_lose_the_connection() -> None:
    """Three streams each hold two unanswered 1,000-byte requests (2,128 bytes with overhead), within the call
    budget; the third takes the connection past its 6,000 bytes."""
    limits = ReaderLimits(max_message_bytes=1024, max_connection_bytes=6000)
    client = client_start()
    for stream in (1, 3):
        client.headers(stream, request_headers(INFER_STREAM)).data(stream, message(b"x" * 1000) * 2)
    sink, reader = read([(CLIENT, client.take())], limits, close=False)
    assert not reader.lost and reader.held() == 2 * 2128
    reader.feed(CLIENT, client.headers(5, request_headers(INFER_STREAM)).data(5, message(b"y" * 1000) * 2).take())
    assert reader.lost and reader.held() == 0
    stats = reader.stats
    assert (stats.over_budget_connections, stats.lost_connections, stats.oversized_calls) == (1, 1, 0)
    reader.close()
    assert sink.offered == [] and sink.rejected == 0  # given up: nothing more is counted


def test_what_a_connection_holds_is_freed_as_its_calls_end() -> None:
    """Answered calls give their bytes back, so a connection may carry any number of them, one after the other."""
    limits = ReaderLimits(max_message_bytes=1024, max_connection_bytes=3000)
    client, server = client_start(), server_start()
    exchanges = []
    for stream in range(1, 41, 2):
        unary(client, server, stream, b"f" * 1000, b"a" * 1000)
        exchanges += conversation(client, server)
    sink, reader = read(exchanges, limits, step=700)
    assert len(sink.offered) == 20 and not reader.lost and reader.held() == 0


def gzip_bombs(streams: range, size: int) -> bytes:
    """One gzip bomb request per stream: ``size`` zero bytes in about size/1000 on the wire."""
    bomb = gzip.compress(b"\x00" * size)
    client = client_start()
    for stream in streams:
        client.headers(stream, request_headers(INFER, "gzip"))
        client.data(stream, bytes([1]) + len(bomb).to_bytes(4, "big") + bomb, end_stream=True)
    return client.take()


def test_gzip_bombs_cost_the_connection_more_work_than_its_bytes_pay_for() -> None:
    """Each bomb on a new call only ends that call (oversized) but still costs a largest message of inflating:
    the connection is given up once its banked work is spent, after a bounded number of them."""
    limits = ReaderLimits(max_message_bytes=MIB, max_work_burst=2 * MIB)
    sink, reader = read([(CLIENT, gzip_bombs(range(1, 200, 2), MIB + 1))], limits, step=16 * 1024)
    assert reader.lost and reader.stats.overworked_connections == 1
    assert 1 <= reader.stats.oversized_calls <= 8  # given up within a few bombs, not after all 100
    assert sink.offered == []


def test_honest_compressed_traffic_stays_within_the_work_budget() -> None:
    """Features that compress well (mostly zeros, as ReLU activations are) and many small calls, whose header
    blocks miss the decoded-block cache: under the same limits, never given up."""
    rng = random.Random(0)
    limits = ReaderLimits(max_message_bytes=MIB, max_work_burst=2 * MIB)
    client, server = client_start(), server_start()
    for i, stream in enumerate(range(1, 401, 2)):
        sparse = bytes(rng.randrange(256) if rng.random() < 0.1 else 0 for _ in range(4096))
        metadata = [("grpc-timeout", f"{rng.randrange(10**6)}u"), ("x-request-id", f"request-{i}")]
        client.headers(stream, request_headers(INFER, "gzip", metadata))
        client.data(stream, message(sparse, "gzip"), end_stream=True)
        server.headers(stream, response_headers("gzip")).data(stream, message(b"logits" * 8, "gzip"))
        server.headers(stream, trailers(), end_stream=True)
    sink, reader = read(conversation(client, server), limits)
    assert len(sink.offered) == 200 and not reader.lost


def test_a_flood_of_indexed_header_fields_costs_more_work_than_its_bytes_pay_for() -> None:
    """A header block of 1,000 one-byte references to the static table decodes to 1,000 fields: pure-Python HPACK
    spends ~5 ms on it, for 1 KB on the wire. The flood is given up; decoding stops there."""
    limits = ReaderLimits(max_message_bytes=MIB, max_work_burst=2 * MIB)
    client = client_start()
    for stream in range(1, 400, 2):
        client.raw(frame(HEADERS, END_HEADERS | END_STREAM, stream, b"\x82" * 1000))  # ":method: GET", 1,000 times
    sink, reader = read([(CLIENT, client.take())], limits, step=4096)
    assert reader.lost and reader.stats.overworked_connections == 1 and sink.offered == []


def test_every_way_a_call_ends_gives_back_what_it_held() -> None:
    """An edge channel keeps one connection open for hours: whatever ends its calls (answered, an unreadable answer,
    refused, reset by either side, too large, a stream answered in part, calls above a GOAWAY) must give back what
    they held, or the connection would creep to its budget and be given up after enough calls."""
    limits = ReaderLimits(max_message_bytes=4096, max_connection_bytes=40_000)
    client, server = client_start(), server_start()
    exchanges = conversation(client, server)
    for round_ in range(30):
        base = 1 + 16 * round_
        unary(client, server, base, b"f" * 3000, b"a" * 100)
        exchanges += conversation(client, server)
        client.headers(base + 2, request_headers(INFER)).data(base + 2, message(b"u" * 3000), end_stream=True)
        server.headers(base + 2, response_headers("gzip")).data(base + 2, bytes([1, 0, 0, 0, 2]) + b"??")
        server.headers(base + 2, trailers(), end_stream=True)
        exchanges += conversation(client, server)
        client.headers(base + 4, request_headers(INFER)).data(base + 4, message(b"r" * 3000), end_stream=True)
        exchanges += conversation(client, server.rst(base + 4, code=0x7))  # refused
        client.headers(base + 6, request_headers(INFER_STREAM)).data(base + 6, message(b"c" * 3000) * 2)
        exchanges += conversation(client.rst(base + 6), server)
        client.headers(base + 8, request_headers(INFER_STREAM)).data(base + 8, message(b"s" * 3000) * 2)
        server.headers(base + 8, response_headers()).data(base + 8, message(b"a")).rst(base + 8)
        exchanges += conversation(client, server)
        client.headers(base + 10, request_headers(INFER_STREAM)).data(base + 10, message(b"o" * 3000))
        client.data(base + 10, message(b"o" * 5000))  # over the message limit: no longer followed
        exchanges += conversation(client, server)
        client.headers(base + 12, request_headers(INFER)).data(base + 12, message(b"d" * 3000))
        server.headers(base + 12, response_headers()).data(base + 12, message(b"a"), end_stream=True)  # no status
        exchanges += conversation(client, server)
    client.headers(481, request_headers(INFER)).data(481, message(b"g" * 3000), end_stream=True)
    client.headers(483, request_headers(INFER)).data(483, message(b"h" * 3000), end_stream=True)
    server.goaway(481)
    server.headers(481, response_headers()).data(481, message(b"a")).headers(481, trailers(), end_stream=True)
    sink, reader = read(exchanges, limits, step=1500, close=False)
    assert not reader.lost and (reader.open_calls, reader.held()) == (0, 0)
    for direction, data in conversation(client, server):
        reader.feed(direction, data)
    assert not reader.lost and (reader.open_calls, reader.held()) == (0, 0)
    assert (len(sink.offered), sink.rejected, reader.stats.refused_calls) == (2 * 30 + 1, 5 * 30, 30 + 1)
