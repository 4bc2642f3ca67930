"""``WireRelay`` in process under pressure: its global budget gives up the heaviest connection, an abusive
connection is given up while an honest one keeps capturing, a failing parser never stops the bytes or ``stop()``,
and a slow client pauses the upstream without losing a byte."""

from __future__ import annotations

import asyncio
import gzip
import random
import threading
from typing import Any

import pytest
from h2_frames import INFER, client_start, frame, request_headers, server_start, unary
from relay_helpers import FILLER_TYPE, Sink, Upstream, relayed, run_bounded, run_relay, unary_call

from attacker.tap import wire_relay
from attacker.tap.reader_limits import ReaderLimits
from attacker.tap.relay_budget import RelayBudget
from attacker.tap.wire_relay import WireRelay

MIB = 1024 * 1024


async def answered(port: int, request: bytes, answer: bytes) -> asyncio.StreamWriter:
    """A connection through the relay that sends ``request`` and reads ``answer``; its writer, left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    assert await reader.readexactly(len(answer)) == answer
    return writer


async def send_one_by_one(writer: asyncio.StreamWriter, upstream: Upstream, sent: int, chunks: list[bytes]) -> None:
    """Write ``chunks``, each once the upstream has all before it (``sent`` bytes so far): one read, one chunk."""
    for chunk in chunks:
        writer.write(chunk)
        sent += len(chunk)
        await upstream.until_received(sent)


def test_over_the_global_budget_the_heaviest_connection_is_given_up_not_the_next_one() -> None:
    """A has 40 KB queued behind a parser held in ``offer``; B, honest, then brings a 20 KB request, which takes
    the total past the 50 KB budget. A, the heaviest, is given up (its bytes still flow), B is captured."""
    a_request, a_answer = unary_call(1, b"a-features", b"a-logits")
    b_request, b_answer = unary_call(1, b"b" * 20_000, b"b-logits")
    fillers = [frame(FILLER_TYPE, 0, 0, bytes([i]) * 10_000) for i in range(4)]
    upstream_a = Upstream(answer_after=len(a_request), answer=a_answer)
    upstream_b = Upstream(answer_after=len(b_request), answer=b_answer)
    sink = Sink()
    sink.gate.clear()

    async def clients(_: WireRelay, port: int) -> None:
        writer_a = await answered(port, a_request, a_answer)
        await asyncio.to_thread(sink.entered.wait, 30)  # the parser now waits in offer() with A's call
        for filler in fillers:
            writer_a.write(filler)
        await upstream_a.until_received(len(a_request) + sum(map(len, fillers)))
        writer_b = await answered(port, b_request, b_answer)
        writer_a.write(fillers[0])  # A given up: its bytes still flow, no longer queued
        await upstream_a.until_received(len(a_request) + sum(map(len, fillers)) + len(fillers[0]))
        sink.gate.set()
        writer_a.close()
        writer_b.close()

    stats = run_bounded(run_relay([upstream_a, upstream_b], sink, clients, limits=ReaderLimits(max_total_bytes=50_000)))
    assert sink.offered == [(INFER, b"a-features", b"a-logits"), (INFER, b"b" * 20_000, b"b-logits")]
    assert bytes(upstream_b.received) == b_request
    assert (stats["evicted_connections"], stats["lost_connections"]) == (1, 1) and stats["dropped_chunks"] >= 1


def test_a_relay_kept_over_its_budget_weighs_its_connections_once_not_per_chunk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A is given up with 40 KB still queued behind a parser held in ``offer``, which keeps the relay's counters
    over its 50 KB budget. B then sends 60 small chunks: the connections are weighed once, and the room that pass
    found lets the rest through on counters alone (the forwarding path stays O(1) per chunk)."""
    a_request, a_answer = unary_call(1, b"a-features", b"a-logits")
    fillers = [frame(FILLER_TYPE, 0, 0, bytes([i]) * 10_000) for i in range(6)]
    small = [frame(FILLER_TYPE, 0, 0, bytes([i]) * 500) for i in range(60)]
    b_start = client_start().take()
    upstream_a = Upstream(answer_after=len(a_request), answer=a_answer)
    upstream_b = Upstream(answer_after=1 << 30, answer=b"")
    sink = Sink()
    sink.gate.clear()
    passes: list[int] = []
    make_room = RelayBudget._make_room

    def counted(budget: RelayBudget, incoming: Any, size: int) -> bool:
        passes.append(incoming.id)
        return make_room(budget, incoming, size)

    monkeypatch.setattr(RelayBudget, "_make_room", counted)

    async def clients(_: WireRelay, port: int) -> None:
        writer_a = await answered(port, a_request, a_answer)
        await asyncio.to_thread(sink.entered.wait, 30)
        await send_one_by_one(writer_a, upstream_a, len(a_request), fillers)  # the fifth takes A past the budget
        _, writer_b = await asyncio.open_connection("127.0.0.1", port)
        writer_b.write(b_start)
        await send_one_by_one(writer_b, upstream_b, len(b_start), small)
        sink.gate.set()
        writer_a.close()
        writer_b.close()

    stats = run_bounded(run_relay([upstream_a, upstream_b], sink, clients, limits=ReaderLimits(max_total_bytes=50_000)))
    assert passes.count(1) == 1 and passes.count(2) == 1  # A gave itself up; B was weighed once
    assert sink.offered == [(INFER, b"a-features", b"a-logits")]
    assert (stats["evicted_connections"], stats["lost_connections"]) == (1, 1)


def test_an_abusive_connection_is_given_up_and_an_honest_one_keeps_capturing() -> None:
    """A sends gzip bombs, each 1 MiB of inflating for 1 KB on the wire, on call after call; B makes ten honest
    calls meanwhile. A is given up for its parse work; every call of B is recorded."""
    bomb = gzip.compress(b"\x00" * (MIB + 1))
    abusive = client_start()
    for stream in range(1, 121, 2):
        abusive.headers(stream, request_headers(INFER, "gzip"))
        abusive.data(stream, bytes([1]) + len(bomb).to_bytes(4, "big") + bomb, end_stream=True)
    bombs = abusive.take()
    rng = random.Random(0)
    honest, cloud = client_start(), server_start()
    requests = [rng.randbytes(4000) for _ in range(10)]
    for i, request in enumerate(requests):
        unary(honest, cloud, 2 * i + 1, request, b"logits-%d" % i)
    honest_request, honest_answer = honest.take(), cloud.take()
    upstream_a = Upstream(answer_after=len(bombs) + 1, answer=b"")
    upstream_b = Upstream(answer_after=len(honest_request), answer=honest_answer)
    sink = Sink()

    async def clients(_: WireRelay, port: int) -> None:
        _, writer_a = await asyncio.open_connection("127.0.0.1", port)
        writer_a.write(bombs)
        await upstream_a.until_received(len(bombs))
        writer_b = await answered(port, honest_request, honest_answer)
        writer_a.close()
        writer_b.close()

    limits = ReaderLimits(max_message_bytes=MIB, max_work_burst=2 * MIB)
    stats = run_bounded(run_relay([upstream_a, upstream_b], sink, clients, limits=limits))
    assert sink.offered == [(INFER, request, b"logits-%d" % i) for i, request in enumerate(requests)]
    assert (stats["overworked_connections"], stats["lost_connections"]) == (1, 1)
    assert stats["oversized_calls"] < 60  # given up well before its last bomb


class Unexpected(BaseException):
    """Not an Exception: nothing in a reader catches it."""


@pytest.mark.parametrize("failure", [RuntimeError("a sink bug"), Unexpected("a sink gone very wrong")],
                         ids=["exception", "base-exception"])
def test_a_failing_sink_never_stops_the_bytes_and_stop_returns(failure: BaseException) -> None:
    """The sink raises on A's call. An Exception loses A's capture only: B, after it, is captured. Anything else
    ends the parser: it gives every capture up, nothing is queued any more (a queue of four chunks here, which a
    dead parser used to leave full, and stop() waiting for room in it forever), and the bytes keep flowing."""
    a_request, a_answer = unary_call(1, b"a-features", b"a-logits")
    b_request, b_answer = unary_call(1, b"b-features", b"b-logits")
    fillers = [frame(FILLER_TYPE, 0, 0, bytes([i]) * 1000) for i in range(12)]
    upstream_a = Upstream(answer_after=len(a_request), answer=a_answer)
    upstream_b = Upstream(answer_after=len(b_request), answer=b_answer)
    sink = Sink(fail_with=failure)

    async def clients(_: WireRelay, port: int) -> None:
        writer_a = await answered(port, a_request, a_answer)
        await asyncio.to_thread(sink.entered.wait, 30)
        await send_one_by_one(writer_a, upstream_a, len(a_request), fillers)  # more than the queue takes
        writer_b = await answered(port, b_request, b_answer)
        writer_a.close()
        writer_b.close()

    stats = run_bounded(run_relay([upstream_a, upstream_b], sink, clients, queue_chunks=4))
    assert bytes(upstream_a.received) == a_request + b"".join(fillers) and bytes(upstream_b.received) == b_request
    if isinstance(failure, Exception):
        assert sink.offered == [(INFER, b"b-features", b"b-logits")]
        assert (stats["parser_failures"], stats["lost_connections"]) == (0, 1)
    else:
        assert sink.offered == []
        assert (stats["parser_failures"], stats["lost_connections"]) == (1, 1)


def test_a_slow_client_pauses_the_upstream_and_nothing_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream sends 32 MiB at once to a client that reads none of it at first: once the relay's writes to the
    client back up, it stops reading the upstream (its buffer stays small) and resumes as the client reads."""
    sent = random.Random(1).randbytes(32 * MIB)
    events: list[tuple[str, int]] = []
    paused = threading.Event()
    pause, resume = wire_relay._Leg.pause_writing, wire_relay._Leg.resume_writing

    def pause_writing(leg: wire_relay._Leg) -> None:
        assert leg.transport is not None
        events.append(("pause", leg.transport.get_write_buffer_size()))
        paused.set()
        pause(leg)

    def resume_writing(leg: wire_relay._Leg) -> None:
        events.append(("resume", 0))
        resume(leg)

    monkeypatch.setattr(wire_relay._Leg, "pause_writing", pause_writing)
    monkeypatch.setattr(wire_relay._Leg, "resume_writing", resume_writing)
    upstream = Upstream(answer_after=1, answer=sent)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"go")
        await asyncio.to_thread(paused.wait, 30)
        return await reader.readexactly(len(sent))

    received, stats = run_bounded(relayed(upstream, Sink(), client))
    assert received == sent
    assert events[0][0] == "pause" and ("resume", 0) in events
    assert max(size for kind, size in events if kind == "pause") < 4 * MIB  # paused, not buffered whole
    assert stats["connections"] == 1


def test_a_parser_past_its_stop_deadline_offers_nothing_more_to_the_closing_recorder() -> None:
    """The parser waits in ``offer`` (a recorder that stalls) with a second answered call read behind it when the stop,
    past ``parser_stop_s``, stops waiting for it: the caller closes the recorder next, so what the parser still reads
    from then on is counted, never offered to a closed recorder."""
    client, server = client_start(), server_start()
    unary(client, server, 1, b"first", b"a")
    unary(client, server, 3, b"second", b"b")
    request, answer = client.take(), server.take()
    sink = Sink()
    sink.gate.clear()
    relays: list[WireRelay] = []

    async def clients(relay: WireRelay, port: int) -> None:
        relays.append(relay)
        writer = await answered(port, request, answer)
        await asyncio.to_thread(sink.entered.wait, 30)  # the parser now waits in offer() with the first call
        writer.close()

    run_bounded(run_relay([Upstream(answer_after=len(request), answer=answer)], sink, clients, parser_stop_s=0.1))
    sink.gate.set()
    relays[0]._parser.join(30)
    assert not relays[0]._parser.is_alive()
    assert sink.offered == [(INFER, b"first", b"a")]
    assert relays[0].stats()["dropped_after_stop"] == 1
