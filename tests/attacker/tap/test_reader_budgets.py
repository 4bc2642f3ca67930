"""The relay tap reader's per-connection budgets (``attacker.tap.reader_limits``): the bytes all of a connection's
calls hold, and the parse work its bytes on the wire pay for. Past either, that connection alone is given up."""

from __future__ import annotations

import gzip
import random

import pytest
from h2_frames import (
    INFER,
    INFER_STREAM,
    MODEL_INFO,
    client_start,
    conversation,
    decoding_state,
    frame,
    message,
    read,
    response_headers,
    server_start,
    settings,
    unary,
)
from hpack.table import HeaderTable

from attacker.tap.h2_reader import CLIENT, END_HEADERS, END_STREAM, HEADERS, SETTINGS_HEADER_TABLE_SIZE
from attacker.tap.reader_limits import DECODED_BLOCK_CACHE_BYTES, ReaderLimits

MIB = 1024 * 1024


def test_calls_each_within_their_budget_but_together_over_the_connections_lose_the_connection() -> None:
    """Three streams each hold two unanswered 1,000-byte requests (2,128 bytes with overhead), within the call
    budget; the third takes the connection past its 6,000 bytes."""
    limits = ReaderLimits(max_message_bytes=1024, max_connection_bytes=6000)
    client = client_start()
    for stream in (1, 3):
        client.request(stream, INFER_STREAM, message(b"x" * 1000) * 2)
    sink, reader = read([(CLIENT, client.take())], limits, close=False)
    assert not reader.lost and reader.held() == 2 * 2128 + decoding_state(reader)
    reader.feed(CLIENT, client.request(5, INFER_STREAM, message(b"y" * 1000) * 2).take())
    assert reader.lost and reader.held() == 0
    stats = reader.stats
    assert (stats.over_budget_connections, stats.lost_connections, stats.oversized_calls) == (1, 1, 0)
    reader.close()
    assert sink.offered == [] and sink.rejected == 0  # given up: nothing more is counted


def test_what_a_connection_holds_is_freed_as_its_calls_end() -> None:
    """Answered calls give their bytes back, so a connection may carry any number of them, one after the other (a
    call holds 2,128 bytes at most, the HPACK state under 1,000)."""
    limits = ReaderLimits(max_message_bytes=1024, max_connection_bytes=3200)
    client, server = client_start(), server_start()
    exchanges = []
    for stream in range(1, 41, 2):
        unary(client, server, stream, b"f" * 1000, b"a" * 1000)
        exchanges += conversation(client, server)
    sink, reader = read(exchanges, limits, step=700)
    assert len(sink.offered) == 20 and not reader.lost and reader.held() == decoding_state(reader)


def gzip_bombs(streams: range, size: int) -> bytes:
    """One gzip bomb request per stream: ``size`` zero bytes in about size/1000 on the wire."""
    bomb = gzip.compress(b"\x00" * size)
    client = client_start()
    for stream in streams:
        client.request(stream, INFER, bytes([1]) + len(bomb).to_bytes(4, "big") + bomb, "gzip", end_stream=True)
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
        client.request(stream, INFER, message(sparse, "gzip"), "gzip", end_stream=True, extra=metadata)
        server.answer(stream, message(b"logits" * 8, "gzip"), "gzip")
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
        client.request(base + 2, INFER, message(b"u" * 3000), end_stream=True)
        server.answer(base + 2, bytes([1, 0, 0, 0, 2]) + b"??", "gzip")
        exchanges += conversation(client, server)
        client.request(base + 4, INFER, message(b"r" * 3000), end_stream=True)
        exchanges += conversation(client, server.rst(base + 4, code=0x7))  # refused
        client.request(base + 6, INFER_STREAM, message(b"c" * 3000) * 2)
        exchanges += conversation(client.rst(base + 6), server)
        client.request(base + 8, INFER_STREAM, message(b"s" * 3000) * 2)
        server.headers(base + 8, response_headers()).data(base + 8, message(b"a")).rst(base + 8)
        exchanges += conversation(client, server)
        client.request(base + 10, INFER_STREAM, message(b"o" * 3000))
        client.data(base + 10, message(b"o" * 5000))  # over the message limit: no longer followed
        exchanges += conversation(client, server)
        client.request(base + 12, INFER, message(b"d" * 3000))
        server.answer(base + 12, message(b"a"), status=None)
        exchanges += conversation(client, server)
    client.request(481, INFER, message(b"g" * 3000), end_stream=True)
    client.request(483, INFER, message(b"h" * 3000), end_stream=True)
    server.goaway(481)
    server.answer(481, message(b"a"))
    sink, reader = read(exchanges, limits, step=1500, close=False)
    assert not reader.lost and (reader.open_calls, reader.held()) == (0, decoding_state(reader))
    for direction, data in conversation(client, server):
        reader.feed(direction, data)
    assert not reader.lost and (reader.open_calls, reader.held()) == (0, decoding_state(reader))
    assert (len(sink.offered), sink.rejected, reader.stats.refused_calls) == (2 * 30 + 1, 5 * 30, 30 + 1)


def test_partial_frames_buffered_past_the_budget_lose_the_connection() -> None:
    """A header frame announced at 60,000 bytes is buffered until it is whole: what the reader buffers counts against
    the connection's budget like what its calls hold, so a frame that never ends cannot hold more."""
    limits = ReaderLimits(max_connection_bytes=6000)
    client = client_start().raw(frame(HEADERS, END_HEADERS, 1, b"\x82" * 60_000)[:9 + 7000])
    _, reader = read([(CLIENT, client.take()[:5000])], limits, step=1000, close=False)
    assert not reader.lost and reader.held() > 4900
    reader.feed(CLIENT, b"\x82" * 2000)
    assert reader.lost and reader.held() == 0
    assert (reader.stats.over_budget_connections, reader.stats.lost_connections) == (1, 1)


def test_a_header_table_grown_past_the_budget_loses_the_connection() -> None:
    """The server allows a 64 KiB table for the client's blocks, and the client fills it with 1 KB headers on calls
    the tap does not even follow: what the table holds counts against the connection's 20,000 bytes."""
    limits = ReaderLimits(max_connection_bytes=20_000)
    client, server = client_start(), server_start().raw(settings((SETTINGS_HEADER_TABLE_SIZE, 65536)))
    client.encoder.header_table_size = 65536
    exchanges = conversation(client, server)
    for stream in range(1, 11, 2):
        client.request(stream, MODEL_INFO, b"", extra=[(f"x-pad-{stream}", "p" * 1000)])
        exchanges += conversation(client, server)
    _, reader = read(exchanges, limits, close=False)
    assert not reader.lost and reader.held() == decoding_state(reader) > 5000
    for stream in range(11, 41, 2):
        client.request(stream, MODEL_INFO, b"", extra=[(f"x-pad-{stream}", "p" * 1000)])
    reader.feed(CLIENT, client.take())
    assert reader.lost and reader.stats.over_budget_connections == 1


def test_the_decoded_block_cache_is_bounded_and_counted() -> None:
    """Three hundred distinct header blocks that leave the table as they found it (a never-indexed request id): each
    is kept in the decoded-block cache, whose bytes count in ``held()`` and stay within its bound."""
    client = client_start()
    exchanges = []
    bounded = []
    for stream in range(1, 601, 2):
        client.request(stream, MODEL_INFO, b"", extra=[("x-request-id", f"request-{stream}", True)])
        exchanges.append((CLIENT, client.take()))
    _, reader = read(exchanges[:2], close=False)
    for _, data in exchanges[2:]:
        reader.feed(CLIENT, data)
        bounded.append(reader._sides[CLIENT].cache_bytes <= DECODED_BLOCK_CACHE_BYTES)
    assert all(bounded) and not reader.lost and 0 < len(reader._sides[CLIENT].cache) < 100  # emptied on the way
    assert reader.held() == decoding_state(reader) > reader._sides[CLIENT].table.size()


def test_decoding_a_header_block_stops_at_the_first_field_the_connection_cannot_pay_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new connection's first block: 2,000 one-byte references to the static table, 2.3 M units of decoding for a
    2 KB block, which with a 64 K allowance pays for about 800 fields. How many fields a block holds is known only
    once it is decoded, so decoding itself must stop there: given up after the whole block, the connection had the
    work done anyway."""
    looked_up = []
    get_by_index = HeaderTable.get_by_index

    def counted(table: HeaderTable, index: int) -> tuple[bytes, bytes]:
        looked_up.append(index)
        return get_by_index(table, index)

    monkeypatch.setattr(HeaderTable, "get_by_index", counted)
    limits = ReaderLimits(work_allowance=64 * 1024)
    client = client_start().raw(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x82" * 2000))
    sink, reader = read([(CLIENT, client.take())], limits)
    assert reader.lost and reader.stats.overworked_connections == 1
    assert len(looked_up) < 900
