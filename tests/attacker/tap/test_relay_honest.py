"""Honest traffic under the relay tap's default limits: what a real edge fleet sends must all be recorded, whatever
the budgets are there to stop. Large float32 feature messages, plain or gzip-compressed, as the first message of a
fresh connection; many connections sending such messages at once; one connection carrying thousands of calls (an
edge channel lives for hours); and the header blocks grpcio really sends, decoded by the reader's HPACK overrides
exactly as by hpack itself."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from h2_frames import (
    INFER,
    INFER_STREAM,
    SETTINGS_ACK,
    Peer,
    Sink,
    client_start,
    message,
    request_headers,
    response_headers,
    server_start,
    trailers,
)
from hpack import Decoder
from hpack.table import table_entry_size
from relay_helpers import Sink as RelaySink
from relay_helpers import SteppedRelay, Upstream, run_bounded, run_relay

from attacker.tap.h2_reader import (
    CLIENT,
    CONTINUATION,
    END_HEADERS,
    HEADERS,
    PADDED,
    PREFACE,
    PRIORITY,
    SERVER,
    H2Reader,
    _CountingTable,
    _Decoder,
)
from attacker.tap.parse_work import WorkPool
from attacker.tap.reader_limits import ReaderLimits
from attacker.tap.wire_relay import WireRelay

MIB = 1024 * 1024
FRAME = 16 * 1024  # SETTINGS_MAX_FRAME_SIZE's default: how a real peer splits a message into DATA frames
CHUNK = 64 * 1024  # about what one read returns off a busy socket


def features(count: int, kind: str, seed: int = 0) -> bytes:
    """``count`` float32 features: ``normal`` compress ~1.1x with gzip, ``relu`` (half zeros) ~1.9x, ``coarse``
    (ReLU of values rounded to one decimal) ~6x."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(count)
    if kind != "normal":
        values = np.maximum(np.round(values, 1) if kind == "coarse" else values, 0)
    return values.astype(np.float32).tobytes()


def data_frames(peer: Peer, stream: int, data: bytes, end_stream: bool = False) -> Peer:
    for start in range(0, len(data), FRAME):
        peer.data(stream, data[start:start + FRAME], end_stream=end_stream and start + FRAME >= len(data))
    return peer


def framed(body: bytes, encoding: str | None) -> bytes:
    """gRPC's length-prefixed message; gzip at zlib's default level, as grpcio compresses (level 9, which
    ``h2_frames.message`` uses, takes seconds on 4 MiB of floats)."""
    if encoding is None:
        return message(body)
    compressed = gzip.compress(body, compresslevel=6)
    return b"\x01" + len(compressed).to_bytes(4, "big") + compressed


def one_call(stream: int, request: bytes, answer: bytes, encoding: str | None) -> tuple[bytes, bytes]:
    """A unary Infer call as a real peer frames it (16 KiB DATA frames), its messages already ``framed``: what
    each side sent."""
    client, server = client_start(), server_start()
    client.headers(stream, request_headers(INFER, encoding))
    data_frames(client, stream, request, end_stream=True)
    server.headers(stream, response_headers(encoding))
    data_frames(server, stream, answer)
    server.headers(stream, trailers(0), end_stream=True)
    return client.take(), server.take()


def feed(reader: H2Reader, direction: int, data: bytes) -> None:
    for start in range(0, len(data), CHUNK):
        reader.feed(direction, data[start:start + CHUNK])


def test_a_4_mib_float32_message_plain_or_gzip_on_a_fresh_connection_is_recorded_under_default_limits() -> None:
    """The first message of a new connection, 4 MiB of features each way, plain or gzip at the ratios real float
    features compress at: recorded, nothing given up, nothing left held but the HPACK state, no pool drawn on."""
    for encoding, kind in ((None, "normal"), ("gzip", "normal"), ("gzip", "relu"), ("gzip", "coarse")):
        request, answer = features(MIB, kind), features(MIB, kind, seed=1)
        pool = WorkPool(ReaderLimits())
        sink = Sink()
        reader = H2Reader(sink, pool=pool)
        sent, answered = one_call(1, framed(request, encoding), framed(answer, encoding), encoding)
        feed(reader, CLIENT, sent)
        feed(reader, SERVER, answered)
        assert sink.offered == [(INFER, request, answer)], (encoding, kind)
        assert not reader.lost and reader.stats.lost_connections == 0, (encoding, kind)
        assert reader.open_calls == 0 and reader.held() < 2048
        assert pool.tokens == ReaderLimits().total_work  # its own bytes paid for its inflating
        reader.close()
        assert pool.accounts == 0


def test_many_connections_sending_4_mib_messages_at_once_are_all_recorded() -> None:
    """Sixty-four edge clients, each with one 4 MiB call (half of them gzip) in flight at once, their chunks
    interleaved and read a batch behind, through the relay's global budget at its defaults: none given up."""
    stepped = SteppedRelay(ReaderLimits())
    connections = [stepped.connect() for _ in range(64)]
    requests = [features(MIB, kind, seed=n) for n, kind in enumerate(("normal", "relu", "coarse", "relu"))]
    answer = features(1024, "normal")
    encodings = (None, "gzip")
    framed_requests = {(n, encoding): framed(request, encoding) for n, request in enumerate(requests)
                       for encoding in encodings}
    framed_answers = {encoding: framed(answer, encoding) for encoding in encodings}
    calls = []
    for n, connection in enumerate(connections):
        encoding = encodings[n % 2]
        request = requests[n % len(requests)]
        sent, answered = one_call(1, framed_requests[n % len(requests), encoding], framed_answers[encoding], encoding)
        calls.append((connection, sent, answered, request, answer))
    for direction in (CLIENT, SERVER):
        longest = max(len(call[1 + direction]) for call in calls)
        for start in range(0, longest, 4 * CHUNK):
            for connection, *sent, _, _ in calls:
                stepped.send(connection, sent[direction][start:start + 4 * CHUNK], piece=CHUNK,
                             direction=direction)
            stepped.parse()
    stats = stepped.relay.stats()
    assert (stats["evicted_connections"], stats["lost_connections"], stats["dropped_chunks"]) == (0, 0, 0)
    assert sorted(stepped.sink.offered) == sorted((INFER, request, answer) for *_, request, answer in calls)
    for connection in connections:
        stepped.close(connection)
    stepped.parse()
    assert (stepped.held(), stepped.waiting(), stepped.readers) == (0, (0, 0), {})


def test_ten_thousand_small_calls_on_one_connection_are_all_recorded_and_nothing_is_left_held() -> None:
    """An edge channel carries call after call for hours. Ten thousand small unary calls, each with its own
    ``grpc-timeout`` (so their header blocks miss the decoded-block cache, as grpcio's do) and a health check every
    hundredth: all recorded, and no counter or balance drifts. What the connection holds stays its HPACK state, the
    parse-work pool is untouched, and once it closes the budget is back to nothing."""
    stepped = SteppedRelay(ReaderLimits())
    connection = stepped.connect()
    client, server = client_start(), server_start()
    stepped.send(connection, client.take())
    stepped.send(connection, server.raw(SETTINGS_ACK).take(), direction=SERVER)
    stepped.send(connection, client.raw(SETTINGS_ACK).take())
    pool = stepped.relay._work_pool
    health_path = "/grpc.health.v1.Health/Check"
    for i in range(10_000):
        stream = 2 * i + 1
        method = health_path if i % 100 == 99 else INFER
        timeout = [("grpc-timeout", f"{999_000 - i}u")]
        client.headers(stream, request_headers(method, extra=timeout)).data(stream, message(b"f%d" % i),
                                                                            end_stream=True)
        server.answer(stream, message(b"a%d" % i))
        stepped.send(connection, client.take())
        stepped.send(connection, server.take(), direction=SERVER)
        if i % 64 == 63:
            stepped.parse()
            assert stepped.held() == stepped.decoding_state()
    stepped.parse()
    assert len(stepped.sink.offered) == 9_900 and stepped.sink.rejected == 0
    assert stepped.sink.offered[-1] == (INFER, b"f9998", b"a9998")
    assert stepped.held() == stepped.decoding_state() and stepped.waiting() == (0, 0)
    assert pool.tokens == ReaderLimits().total_work and pool.accounts == 1
    stats = stepped.relay.stats()
    assert (stats["lost_connections"], stats["evicted_connections"], stats["dropped_chunks"]) == (0, 0, 0)
    stepped.close(connection)
    stepped.parse()
    assert (stepped.held(), stepped.waiting(), stepped.readers, pool.accounts) == (0, (0, 0), {}, 0)


# Real grpcio traffic, recorded through a TCP relay


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-trailer", "t" * (len(request) % 40)),))
    return request[:100]


def _stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    return (request[:50] for request in requests)


def _recording_relay(upstream_port: int, record: list[tuple[int, int, bytes]]) -> tuple[socket.socket, int]:
    """A TCP relay recording (connection, direction, chunk) in the order it forwarded them."""
    listener = socket.create_server(("127.0.0.1", 0))
    lock = threading.Lock()

    def pump(source: socket.socket, sink: socket.socket, direction: int, connection: int) -> None:
        # a peer that closes first (the end of a conversation) ends the pump: a broken pipe or a reset is no error
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                with lock:
                    record.append((connection, direction, data))
                    sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        for connection in range(1000):
            try:
                edge, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=pump, args=(edge, upstream, CLIENT, connection), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, edge, SERVER, connection), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def grpcio_conversations() -> list[tuple[int, int, bytes]]:
    """What a grpcio client and server send each other: unary and streaming Infer calls with metadata and
    deadlines, plain and gzip, health checks and reflection, on two connections."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("cem.split.v1.SplitInference", {
        "Infer": grpc.unary_unary_rpc_method_handler(_unary),
        "InferStream": grpc.stream_stream_rpc_method_handler(_stream),
    }),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    reflection.enable_server_reflection(("cem.split.v1.SplitInference", reflection.SERVICE_NAME), server)
    upstream = server.add_insecure_port("127.0.0.1:0")
    server.start()
    record: list[tuple[int, int, bytes]] = []
    listener, port = _recording_relay(upstream, record)
    try:
        for compression in (grpc.Compression.NoCompression, grpc.Compression.Gzip):
            with grpc.insecure_channel(f"127.0.0.1:{port}", compression=compression) as channel:
                infer = channel.unary_unary(INFER)
                stream = channel.stream_stream(INFER_STREAM)
                checks = health_pb2_grpc.HealthStub(channel)
                reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
                for i in range(120):
                    metadata = [("x-request-id", f"request-{i}")]
                    if i % 3 == 0:
                        metadata.append(("authorization", "Bearer " + "k" * (i % 40)))
                    infer(bytes(i % 256 for _ in range(1000 + i)), timeout=3 + i * 0.0371, metadata=metadata)
                    if i % 10 == 0:
                        checks.Check(health_pb2.HealthCheckRequest(service=""), timeout=1 + i / 100)
                    if i % 40 == 0:
                        list(stream(iter([b"s" * 100] * 5), timeout=10))
                        list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                            list_services="")])))
    finally:
        server.stop(0).wait(5)
        listener.close()
    return list(record)


def header_blocks(record: list[tuple[int, int, bytes]]) -> dict[tuple[int, int], list[bytes]]:
    """Every header block each (connection, direction) sent, in order."""
    sent: dict[tuple[int, int], bytearray] = defaultdict(bytearray)
    for connection, direction, data in record:
        sent[(connection, direction)] += data
    blocks: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    for key, data in sent.items():
        pos, block = len(PREFACE) if key[1] == CLIENT else 0, bytearray()
        while pos + 9 <= len(data):
            length, kind, flags = int.from_bytes(data[pos:pos + 3], "big"), data[pos + 3], data[pos + 4]
            payload = bytes(data[pos + 9:pos + 9 + length])
            pos += 9 + length
            if kind == HEADERS:
                start, stop = (1, len(payload) - payload[0]) if flags & PADDED else (0, len(payload))
                block = bytearray(payload[start + (5 if flags & PRIORITY else 0):stop])
            elif kind == CONTINUATION:
                block += payload
            if kind in (HEADERS, CONTINUATION) and flags & END_HEADERS:
                blocks[key].append(bytes(block))
    return blocks


def test_real_grpcio_header_blocks_decode_the_same_with_the_readers_hpack_overrides() -> None:
    """``_Decoder`` and ``_CountingTable`` override private hpack methods: on every header block grpcio really sent
    (its dynamic table in use, ``:path`` and ``grpc-timeout`` indexed anew each call), they must decode exactly what
    hpack's own decoder does, leave the same table, and count its size as hpack does; and the reader, fed the same
    bytes, records every Infer call."""
    record = grpcio_conversations()
    blocks = header_blocks(record)
    assert len(blocks) == 4
    decoded = insertions = evicted = 0
    for sent in blocks.values():
        plain = Decoder()
        ours = _Decoder()
        ours.header_table = table = _CountingTable()
        ours.field_limit = 1 << 30
        for block in sent:
            expected = plain.decode(block, raw=True)
            assert ours.decode(block, raw=True) == expected
            assert ours.fields == len(expected)
            assert list(table.dynamic_entries) == list(plain.header_table.dynamic_entries)
            assert table.maxsize == plain.header_table.maxsize
            assert table.size() == sum(table_entry_size(*entry) for entry in table.dynamic_entries)
            decoded += 1
        insertions += table.insertions
        evicted += table.insertions - len(table.dynamic_entries)
    assert decoded > 600 and insertions > 50 and evicted > 0  # the dynamic table in use, entries evicted
    for connection in (0, 1):
        sink = Sink()
        reader = H2Reader(sink)
        for number, direction, data in record:
            if number == connection:
                reader.feed(direction, data)
        assert not reader.lost and reader.stats.lost_connections == 0
        assert len(sink.offered) == 120 + 3 * 5 and sink.rejected == 0
        reader.close()


def test_reader_warnings_left_out_are_summed_up_when_the_relay_stops(caplog: pytest.LogCaptureFixture) -> None:
    """Fifteen connections that are not HTTP/2, each lost by its reader: the first ten warnings are logged one by
    one and the other five must be summed up once the relay stops, as its own give-up warnings are (the readers'
    rate-limited log lives on the parser thread, and nothing flushed it: the five were never reported)."""

    async def clients(_: WireRelay, port: int) -> None:
        for _ in range(15):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.read()  # the upstream answers and closes
            writer.close()

    upstreams = [Upstream(1, b"HTTP/1.1 404 Not Found\r\n\r\n", close_after_answer=True) for _ in range(15)]
    with caplog.at_level(logging.WARNING, logger="attacker.tap.h2_reader"):
        stats = run_bounded(run_relay(upstreams, RelaySink(), clients))
    lines = [record.getMessage() for record in caplog.records if record.name == "attacker.tap.h2_reader"]
    assert stats["lost_connections"] == 15
    assert len(lines) == 11 and lines[-1].startswith("5 more connections no longer captured")
