"""The relay tap's passive HTTP/2 reader: calls rebuilt from frames built by hand, and hostile bytes survived."""

from __future__ import annotations

import gzip
import random

import pytest
from h2_frames import (
    INFER,
    INFER_STREAM,
    MODEL_INFO,
    SETTINGS_ACK,
    Sink,
    client_start,
    conversation,
    frame,
    message,
    read,
    request_headers,
    response_headers,
    server_start,
    settings,
    trailers,
    unary,
)
from hpack import Decoder, Encoder
from hpack.hpack import encode_integer

from attacker.tap.h2_reader import (
    CLIENT,
    END_HEADERS,
    HEADERS,
    PREFACE,
    PUSH_PROMISE,
    SERVER,
    H2Reader,
    _CountingTable,
    _Decoder,
)
from attacker.tap.reader_limits import Overworked, ReaderLimits, ReaderStats


def test_a_unary_call_answered_ok_is_offered_with_its_answer() -> None:
    client, server = client_start(), server_start()
    unary(client, server, 1, b"features", b"logits")
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())])
    assert sink.offered == [(INFER, b"features", b"logits")]
    assert (sink.rejected, reader.lost, reader.open_calls) == (0, False, 0)


def mixed_conversation() -> list[tuple[int, bytes]]:
    """Padding, priority, CONTINUATION, messages split over frames and frames holding several, two streams."""
    client, server = client_start(), server_start()
    exchanges: list[tuple[int, bytes]] = []
    client.headers(1, request_headers(INFER), pad=3, priority=True, pieces=3)
    client.headers(3, request_headers(INFER_STREAM), pieces=2)
    long_request = message(b"r" * 300)
    client.data(1, long_request[:2], pad=7).data(1, long_request[2:150]).data(1, long_request[150:], end_stream=True)
    client.data(3, message(b"s0") + message(b"s1")[:4]).data(3, message(b"s1")[4:] + message(b""))
    exchanges.append((CLIENT, client.take()))
    server.headers(3, response_headers(), pad=2).data(3, message(b"a0"), pad=1)
    server.headers(1, response_headers(), pieces=2).data(1, message(b"long answer"))
    server.data(3, message(b"a1") + message(b"a2"))
    exchanges.append((SERVER, server.take()))
    server.headers(1, trailers(0), end_stream=True).headers(3, trailers(0), end_stream=True)
    exchanges.append((SERVER, server.take()))
    return exchanges


EXPECTED_MIXED = [(INFER_STREAM, b"s0", b"a0"), (INFER_STREAM, b"s1", b"a1"), (INFER_STREAM, b"", b"a2"),
                  (INFER, b"r" * 300, b"long answer")]


def test_padding_continuation_split_messages_and_interleaved_streams() -> None:
    sink, reader = read(mixed_conversation())
    assert sink.offered == EXPECTED_MIXED
    assert (sink.rejected, reader.lost) == (0, False)


def test_one_byte_at_a_time_reads_the_same_calls() -> None:
    sink, reader = read(mixed_conversation(), step=1)
    assert sink.offered == EXPECTED_MIXED
    assert (sink.rejected, reader.lost) == (0, False)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_requests_and_answers_are_recorded_decompressed(encoding: str) -> None:
    client, server = client_start(), server_start()
    client.headers(1, request_headers(INFER, encoding)).data(1, message(b"features" * 50, encoding), end_stream=True)
    server.headers(1, response_headers(encoding)).data(1, message(b"logits" * 20, encoding))
    server.headers(1, trailers(), end_stream=True)
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())])
    assert sink.offered == [(INFER, b"features" * 50, b"logits" * 20)]
    assert reader.stats.undecodable_messages == 0


def test_an_unknown_encoding_is_counted_and_keeps_the_stream_paired() -> None:
    client, server = client_start(), server_start()
    client.headers(1, request_headers(INFER_STREAM, "snappy"))
    client.data(1, message(b"plain-0") + bytes([1]) + (4).to_bytes(4, "big") + b"????" + message(b"plain-2"))
    server.headers(1, response_headers()).data(1, message(b"a0") + message(b"a1") + message(b"a2"))
    server.headers(1, trailers(), end_stream=True)
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())])
    assert sink.offered == [(INFER_STREAM, b"plain-0", b"a0"), (INFER_STREAM, b"plain-2", b"a2")]
    assert (reader.stats.undecodable_messages, sink.rejected) == (1, 0)


def test_a_refused_call_is_counted_not_offered_and_other_methods_are_not_recorded() -> None:
    client, server = client_start(), server_start()
    unary(client, server, 1, b"info?", b"info", method=MODEL_INFO)
    unary(client, server, 3, b"bad shape", b"", status=3)
    client.headers(5, request_headers(INFER)).data(5, message(b"x"), end_stream=True)
    server.headers(5, trailers(12) + [(":status", "200")], end_stream=True)  # trailers-only: UNIMPLEMENTED
    unary(client, server, 7, b"good", b"answer")
    sink, _ = read([(CLIENT, client.take()), (SERVER, server.take())])
    assert sink.offered == [(INFER, b"good", b"answer")]
    assert sink.rejected == 2


def test_reset_and_close_count_the_unanswered_requests_and_goaway_refused_calls_are_not_rejected() -> None:
    client, server = client_start(), server_start()
    for stream in (1, 3, 5, 7, 9):
        client.headers(stream, request_headers(INFER_STREAM)).data(stream, message(b"a") + message(b"b"))
    server.headers(1, response_headers()).data(1, message(b"answer to a")).rst(1)  # b never answered
    client.rst(3)
    server.goaway(5)  # 7 and 9 were never processed, and gRPC retries them; 5 still may be answered
    client.headers(11, request_headers(INFER)).data(11, message(b"late"), end_stream=True)  # above the GOAWAY
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())], close=False)
    assert sink.offered == [(INFER_STREAM, b"a", b"answer to a")]
    assert (sink.rejected, reader.open_calls, reader.stats.refused_calls) == (1 + 2, 1, 2 + 1)
    reader.close()
    assert (sink.rejected, reader.open_calls) == (5, 0)


def test_a_stream_pairs_each_answer_with_the_oldest_request_as_it_arrives() -> None:
    client, server = client_start(), server_start()
    client.headers(1, request_headers(INFER_STREAM)).data(1, message(b"q0") + message(b"q1") + message(b"q2"))
    sink = Sink()
    reader = H2Reader(sink)
    reader.feed(CLIENT, client.take())
    reader.feed(SERVER, server.headers(1, response_headers()).data(1, message(b"a0")).take())
    assert sink.offered == [(INFER_STREAM, b"q0", b"a0")]  # offered before the call ends
    reader.feed(SERVER, server.data(1, message(b"a1")).headers(1, trailers(3), end_stream=True).take())
    assert sink.offered == [(INFER_STREAM, b"q0", b"a0"), (INFER_STREAM, b"q1", b"a1")]
    assert sink.rejected == 1  # q2: the call ended INVALID_ARGUMENT before answering it


def test_a_larger_header_table_announced_in_settings_is_followed() -> None:
    """The client allows the server's encoder a 16 KiB table; the server uses it for big, repeated metadata."""
    big = [(f"x-meta-{i}", "v" * 1000) for i in range(8)]  # ~8 KB: evicted again and again from a 4 KiB table
    exchanges = []
    for announced in (True, False):
        client, server = client_start(), server_start()
        if announced:
            client.raw(settings((0x1, 16384)))
        server.encoder.header_table_size = 16384
        for stream in (1, 3):
            client.headers(stream, request_headers(INFER)).data(stream, message(b"f"), end_stream=True)
            server.headers(stream, response_headers() + big).data(stream, message(b"a"))
            server.headers(stream, trailers(), end_stream=True)
        exchanges.append([(CLIENT, client.take()), (SERVER, server.take())])
    sink, reader = read(exchanges[0])
    assert len(sink.offered) == 2 and not reader.lost
    sink, reader = read(exchanges[1])  # the server's table update exceeds what the client allowed
    assert sink.offered == [] and reader.lost and reader.stats.lost_connections == 1


@pytest.mark.parametrize("announcer", ["server", "client"])
@pytest.mark.parametrize("size", [0, 256, 16384])
def test_the_header_table_size_either_side_announces_is_followed(announcer: str, size: int) -> None:
    """SETTINGS_HEADER_TABLE_SIZE bounds the table of the announcer's decoder, so the *other* side's encoder: it
    acknowledges the SETTINGS and starts its next block with a table size update, then indexes its metadata in a
    table that small (everything evicted at once with 0) or that large."""
    client, server = client_start(), server_start()
    exchanges = conversation(client, server)  # the preface and both sides' first SETTINGS
    announcing, encoding = (server, client) if announcer == "server" else (client, server)
    exchanges.append((SERVER if announcer == "server" else CLIENT, announcing.raw(settings((0x1, size))).take()))
    # the other side acknowledges both of the announcer's SETTINGS frames, and sizes its table at its next block
    exchanges.append((CLIENT if announcer == "server" else SERVER, encoding.raw(SETTINGS_ACK * 2).take()))
    encoding.encoder.header_table_size = size
    metadata = [(f"x-meta-{i}", "m" * 60) for i in range(6)]  # ~550 bytes: more than 256, far less than 16 KiB
    for stream in (1, 3, 5):
        client.headers(stream, request_headers(INFER, extra=metadata)).data(stream, message(b"f%d" % stream),
                                                                            end_stream=True)
        server.headers(stream, response_headers() + metadata).data(stream, message(b"a"))
        server.headers(stream, trailers(), end_stream=True)
        exchanges += conversation(client, server)
    sink, reader = read(exchanges)
    assert sink.offered == [(INFER, b"f%d" % stream, b"a") for stream in (1, 3, 5)] and not reader.lost
    assert reader._sides[SERVER if announcer == "client" else CLIENT].table.maxsize == size


def size_update(size: int) -> bytes:
    """An HPACK dynamic table size update, as the first thing of a header block."""
    update = encode_integer(size, 5)
    update[0] |= 0x20
    return bytes(update)


@pytest.mark.parametrize("acknowledged", [True, False])
def test_a_table_larger_than_the_decoding_side_allows_is_a_compression_error(acknowledged: bool) -> None:
    """The server announced a 256-byte table. Once the client has acknowledged it, a client block that sizes its
    table back to 4096 is one the server fails the connection for, so the reader gives the connection up; before
    the ACK the client may not have seen the new size yet, and the old one is still allowed."""
    client, server = client_start(), server_start()
    exchanges = conversation(client, server.raw(settings((0x1, 256))))
    if acknowledged:
        exchanges.append((CLIENT, SETTINGS_ACK * 2))  # of the server's first SETTINGS and of this one
    block = size_update(4096) + Encoder().encode(request_headers(INFER))
    client.raw(frame(HEADERS, END_HEADERS, 1, block)).data(1, message(b"features"), end_stream=True)
    server.headers(1, response_headers()).data(1, message(b"a")).headers(1, trailers(), end_stream=True)
    sink, reader = read(exchanges + conversation(client, server))
    assert reader.lost is acknowledged and reader.stats.lost_connections == int(acknowledged)
    assert sink.offered == ([] if acknowledged else [(INFER, b"features", b"a")])


def test_a_server_push_gives_the_connection_up_counted_and_never_raises() -> None:
    """gRPC never pushes; a PUSH_PROMISE's header block would change the HPACK table the reader cannot follow
    without it, so the connection is given up (its bytes still flow), and what was recorded before stays."""
    client, server = client_start(), server_start()
    unary(client, server, 1, b"before", b"answer")
    exchanges = conversation(client, server)
    client.headers(3, request_headers(INFER)).data(3, message(b"after"), end_stream=True)
    promise = (2).to_bytes(4, "big") + server.encoder.encode(request_headers("/pushed"))
    server.raw(frame(PUSH_PROMISE, END_HEADERS, 3, promise))
    server.headers(3, response_headers()).data(3, message(b"a")).headers(3, trailers(), end_stream=True)
    sink, reader = read(exchanges + conversation(client, server))
    assert sink.offered == [(INFER, b"before", b"answer")]
    assert reader.lost and reader.stats.lost_connections == 1 and sink.rejected == 0


def test_header_blocks_of_other_calls_keep_the_table_in_sync() -> None:
    """hpack indexes the custom header on the health call; the Infer call after it refers to that entry."""
    client, server = client_start(), server_start()
    trace = [("x-trace", "t" * 40), ("x-route", "/cem.split.v1.SplitInference/Infer")]
    unary(client, server, 1, b"", b"SERVING", method="/grpc.health.v1.Health/Check")
    client.headers(3, request_headers(MODEL_INFO, extra=trace)).data(3, message(b""), end_stream=True)
    client.headers(5, request_headers(INFER, extra=trace)).data(5, message(b"features"), end_stream=True)
    for stream in (3, 5):
        server.headers(stream, response_headers() + trace).data(stream, message(b"answer"))
        server.headers(stream, trailers(), end_stream=True)
    sink, _ = read([(CLIENT, client.take()), (SERVER, server.take())])
    assert sink.offered == [(INFER, b"features", b"answer")]


def test_the_same_block_bytes_in_another_table_state_are_decoded_again() -> None:
    """``0xbe`` names the newest table entry: the Infer path on stream 3, the GetModelInfo path on stream 7. A
    decoded block is reused only in the table state it was decoded in."""
    client, server = client_start(), server_start()
    paths = {1: Encoder().encode([(":path", INFER)]), 3: b"\xbe", 5: Encoder().encode([(":path", MODEL_INFO)]),
             7: b"\xbe"}
    for stream, block in paths.items():
        client.raw(frame(HEADERS, END_HEADERS, stream, block)).data(stream, message(b"f%d" % stream), end_stream=True)
        server.headers(stream, response_headers()).data(stream, message(b"a")).headers(stream, trailers(),
                                                                                     end_stream=True)
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())])
    assert sink.offered == [(INFER, b"f1", b"a"), (INFER, b"f3", b"a")] and not reader.lost


# --- hostile input: never raises, bounded state --------------------------------------------------------------------


def test_bytes_that_are_not_http2_lose_the_connection_once() -> None:
    stats = ReaderStats()
    reader = H2Reader(Sink(), stats=stats)
    reader.feed(CLIENT, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reader.feed(CLIENT, PREFACE_AND_CALL)
    reader.feed(SERVER, b"\x00" * 100)
    reader.close()
    assert reader.lost and stats.lost_connections == 1


PREFACE_AND_CALL = client_start().headers(1, request_headers(INFER)).data(1, message(b"f"), end_stream=True).take()


def test_random_and_mutated_bytes_never_raise_and_stay_bounded() -> None:
    rng = random.Random(0)
    client, server = client_start(), server_start()
    unary(client, server, 1, b"features" * 30, b"logits")
    client.headers(3, request_headers(INFER_STREAM, "gzip")).data(3, message(b"q" * 100, "gzip") + message(b"r"))
    server.headers(3, response_headers()).data(3, message(b"a") * 2).headers(3, trailers(), end_stream=True)
    valid = [client.take(), server.take()]
    limits = ReaderLimits(max_message_bytes=4096, max_streams=4, max_header_block_bytes=2048)
    for trial in range(300):
        sides = [bytearray(data) for data in valid]
        if trial % 3 == 0:
            sides = [bytearray(PREFACE + rng.randbytes(rng.randrange(1, 400))), bytearray(rng.randbytes(300))]
        else:
            for side in sides:
                for _ in range(rng.randrange(1, 6)):
                    side[rng.randrange(len(side))] = rng.randrange(256)
        reader = H2Reader(Sink(), limits)
        for _ in range(40):
            direction = rng.randrange(2)
            cut = rng.randrange(1, 64)
            chunk, sides[direction][:cut] = bytes(sides[direction][:cut]), b""
            reader.feed(direction, chunk)
            assert reader.open_calls <= limits.max_streams
            assert all(len(side.buffer) <= 2048 + 9 + 64 for side in reader._sides)
        reader.close()


def test_truncated_conversations_never_raise() -> None:
    client, server = client_start(), server_start()
    unary(client, server, 1, b"features", b"logits")
    c2s, s2c = client.take(), server.take()
    for cut in range(len(c2s) + 1):
        sink, _ = read([(CLIENT, c2s[:cut]), (SERVER, s2c[: cut % (len(s2c) + 1)])])
        assert len(sink.offered) <= 1


def test_a_header_block_over_the_cap_loses_the_connection() -> None:
    client = client_start()
    client.headers(1, request_headers(INFER, extra=[("x-big", "b" * 5000)]), pieces=4)
    _, reader = read([(CLIENT, client.take())], ReaderLimits(max_header_block_bytes=4096))
    assert reader.lost
    _, reader = read([(CLIENT, client_start().raw(frame(HEADERS, 0, 1, b"\x00" * 5000)).take())],
                     ReaderLimits(max_header_block_bytes=4096))
    assert reader.lost


def test_a_message_over_the_cap_ends_that_call_only() -> None:
    client, server = client_start(), server_start()
    client.headers(1, request_headers(INFER))
    client.data(1, message(b"x" * 2000)[:600])  # the prefix says 2000 bytes: refused before any is held
    unary(client, server, 3, b"small", b"answer")
    client.data(1, b"x" * 1405, end_stream=True)
    server.headers(1, response_headers()).data(1, message(b"a")).headers(1, trailers(), end_stream=True)
    client.headers(5, request_headers(INFER_STREAM)).data(5, message(b"y" * 600) * 3)  # over the call's budget
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())],
                        ReaderLimits(max_message_bytes=1024, max_call_bytes=1500))
    assert sink.offered == [(INFER, b"small", b"answer")]
    assert (reader.stats.oversized_calls, sink.rejected, reader.lost) == (2, 0, False)


def test_messages_up_to_the_cap_are_recorded_each_judged_alone_as_grpc_judges_them() -> None:
    client, server = client_start(), server_start()
    unary(client, server, 1, b"x" * 1024, b"a" * 1024)  # request and answer each exactly at the cap
    client.headers(3, request_headers(INFER_STREAM)).data(3, message(b"y" * 1000) * 3, end_stream=True)
    server.headers(3, response_headers()).data(3, message(b"r") * 3).headers(3, trailers(), end_stream=True)
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())], ReaderLimits(max_message_bytes=1024))
    assert sink.offered == [(INFER, b"x" * 1024, b"a" * 1024), *[(INFER_STREAM, b"y" * 1000, b"r")] * 3]
    assert reader.stats.oversized_calls == 0


def test_a_decompression_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\x00" * (8 * 1024 * 1024))  # 8 MiB of zeros in ~8 KB
    assert len(bomb) < 10_000
    client, server = client_start(), server_start()
    client.headers(1, request_headers(INFER, "gzip"))
    client.data(1, bytes([1]) + len(bomb).to_bytes(4, "big") + bomb, end_stream=True)
    server.headers(1, response_headers()).data(1, message(b"a")).headers(1, trailers(), end_stream=True)
    sink, reader = read([(CLIENT, client.take()), (SERVER, server.take())], ReaderLimits(max_message_bytes=65536))
    assert sink.offered == [] and reader.stats.oversized_calls == 1 and not reader.lost


def test_too_many_open_streams_are_counted_not_followed() -> None:
    client = client_start()
    for stream in range(1, 2 * 50, 2):
        client.headers(stream, request_headers(INFER_STREAM)).data(stream, message(b"q"))
    sink, reader = read([(CLIENT, client.take())], ReaderLimits(max_streams=10), close=False)
    assert (reader.open_calls, reader.stats.streams_ignored) == (10, 40)
    reader.close()
    assert sink.rejected == 10


def test_the_private_hpack_api_the_reader_relies_on_is_still_there() -> None:
    """``_Decoder`` overrides three private methods of hpack's ``Decoder`` and the table's size is read from a private
    attribute (pyproject pins ``hpack>=4,<5`` for it). An hpack that renamed any of them would silently undo what they
    do: connections given up when a table shrinks late, header fields decoded unpaid, tables the budget does not see.
    This fails loudly instead."""
    for name in ("_assert_valid_table_size", "_decode_indexed", "_decode_literal"):
        assert callable(getattr(Decoder, name, None)), f"hpack's Decoder has no {name} any more"
    decoder = _Decoder()
    decoder.header_table = table = _CountingTable()
    decoder.field_limit = 2
    block = Encoder().encode([(":method", "POST"), ("x-literal", "value")])  # one indexed field, one literal
    assert decoder.decode(block, raw=True) == [(b":method", b"POST"), (b"x-literal", b"value")]
    assert decoder.fields == 2 and table.size() == 32 + len("x-literal") + len("value")
    decoder.field_limit = 1
    with pytest.raises(Overworked):
        decoder.decode(block, raw=True)
