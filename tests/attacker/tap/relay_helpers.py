"""A ``WireRelay`` in process, between scripted TCP peers (``relayed``, ``run_relay``) or stepped by hand
(``SteppedRelay``), and what its parser offered (imported by name from ``tests/attacker/tap``)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from h2_frames import client_start, decoding_state, server_start, unary

from attacker.tap.h2_reader import CLIENT, H2Reader
from attacker.tap.reader_limits import ReaderLimits
from attacker.tap.relay_budget import Connection
from attacker.tap.wire_relay import WireRelay

FILLER_TYPE = 0xFA  # a frame type readers skip


class Sink:
    """The recorder's side of the relay, in process: what was offered. ``gate`` holds the parser in ``offer``,
    ``entered`` is set once the parser is there; ``fail_with`` is raised (once) instead of taking the offer."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.offered: list[tuple[str, bytes, bytes | None]] = []
        self.rejected = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_with = fail_with

    def offer(self, method: str, payload: bytes, response: bytes | None = None) -> bool:
        self.entered.set()
        self.gate.wait(30)
        if self.fail_with is not None:
            failure, self.fail_with = self.fail_with, None
            raise failure
        self.offered.append((method, payload, response))
        return True

    def count_rejected(self, requests: int = 1) -> None:
        self.rejected += requests


class Upstream:
    """A scripted TCP upstream: keeps what it receives and, once it has ``answer_after`` bytes, sends ``answer``."""

    def __init__(self, answer_after: int, answer: bytes, close_after_answer: bool = False) -> None:
        self.received = bytearray()
        self.answer_after, self.answer, self.close_after_answer = answer_after, answer, close_after_answer

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        while data := await reader.read(65536):
            self.received += data
            if not answered and len(self.received) >= self.answer_after:
                answered = True
                writer.write(self.answer)
                if self.close_after_answer:
                    break
        if not answered:  # the client shut its half first: answer now, over the half still open
            writer.write(self.answer)
        writer.close()

    async def until_received(self, size: int) -> None:
        for _ in range(3000):
            if len(self.received) >= size:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the upstream got {len(self.received)} of {size} bytes")


async def serve_upstreams(*upstreams: Upstream) -> tuple[asyncio.Server, str]:
    """One listening upstream whose n-th connection is served by ``upstreams[n]``; the server and its HOST:PORT."""
    scripts = list(upstreams)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripts.pop(0).serve(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def run_relay(upstreams: list[Upstream], sink: Sink, clients: Callable[[WireRelay, int], Awaitable[None]],
                    **relay_options: Any) -> dict[str, int]:
    """A relay in front of ``upstreams`` (one per connection, in order) while ``clients(relay, port)`` runs; the
    relay's counters once it stopped."""
    server, address = await serve_upstreams(*upstreams)
    relay = WireRelay("127.0.0.1:0", address, sink, **relay_options)
    port = await relay.start()
    try:
        await clients(relay, port)
    finally:
        await relay.stop(5)
        server.close()
    return relay.stats()


async def relayed(upstream: Upstream, sink: Sink, client: Callable[..., Awaitable[bytes]],
                  **relay_options: Any) -> tuple[bytes, dict[str, int]]:
    """Run ``client(reader, writer)`` through a relay in front of ``upstream``; what it read, and the counters."""
    answers: list[bytes] = []

    async def one_client(_: WireRelay, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers.append(await client(reader, writer))
        writer.close()

    stats = await run_relay([upstream], sink, one_client, **relay_options)
    return answers[0], stats


def run_bounded(coroutine: Coroutine[Any, Any, Any], timeout_s: float = 60.0) -> Any:
    """``asyncio.run`` on a thread of its own, so that a relay that hangs fails the test instead of hanging it."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:  # noqa: BLE001 - raised again on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the relay did not finish within {timeout_s:.0f} s"
    if errors:
        raise errors[0]
    return result[0]


def unary_call(stream: int, request: bytes, answer: bytes) -> tuple[bytes, bytes]:
    """A whole connection's bytes, each way, for one unary Infer call."""
    client, server = client_start(), server_start()
    unary(client, server, stream, request, answer)
    return client.take(), server.take()


class _Pair:
    """What the relay's budget reads of a relayed connection, without its sockets."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection


class SteppedRelay:
    """A relay never started: ``send`` is a leg's ``data_received`` past the write, ``parse`` the parser thread
    reading all that is queued."""

    def __init__(self, limits: ReaderLimits) -> None:
        self.sink = Sink()
        self.relay = WireRelay("127.0.0.1:0", "127.0.0.1:1", self.sink, limits=limits)
        self.readers: dict[int, H2Reader] = {}
        self._pairs: dict[int, _Pair] = {}

    def connect(self) -> Connection:
        connection = Connection(len(self._pairs) + 1)
        self._pairs[connection.id] = _Pair(connection)
        self.relay._pairs.add(self._pairs[connection.id])
        return connection

    def close(self, connection: Connection) -> None:
        self.relay._pairs.discard(self._pairs[connection.id])
        self.relay._budget.closed(connection)

    def send(self, connection: Connection, data: bytes, piece: int | None = None, direction: int = CLIENT) -> None:
        """``data`` from ``direction``, in chunks of ``piece`` bytes (one chunk when None)."""
        piece = piece or len(data)
        for start in range(0, len(data), piece):
            self.relay._hand_off(connection, direction, data[start:start + piece])

    def parse(self) -> None:
        while True:
            try:
                item = self.relay._budget.queue.get_nowait()
            except queue.Empty:
                return
            assert item is not None
            self.relay._parse_chunk(self.readers, *item)

    def held(self) -> int:
        return self.relay._budget._held_bytes

    def decoding_state(self) -> int:
        """What every reader's HPACK state holds, a part of ``held``."""
        return sum(decoding_state(reader) for reader in self.readers.values())

    def waiting(self) -> tuple[int, int]:
        """Bytes and chunks queued and not yet read, as the relay counts them."""
        budget = self.relay._budget
        return budget._queued_bytes - budget._parsed_bytes, budget._queued_chunks - budget._parsed_chunks
