"""A ``WireRelay`` in process, between scripted TCP peers, and what its parser offered (imported by name from
``tests/attacker/tap``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from attacker.tap.wire_relay import WireRelay


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


async def relayed(upstream: Upstream, sink: Sink, client: Callable[..., Awaitable[bytes]],
                  **relay_options: Any) -> tuple[bytes, dict[str, int]]:
    """Run ``client(reader, writer)`` through a relay in front of ``upstream``; what it read, and the counters."""
    server, address = await serve_upstreams(upstream)
    relay = WireRelay("127.0.0.1:0", address, sink, **relay_options)
    port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await client(reader, writer)
        writer.close()
    finally:
        await relay.stop(5)
        server.close()
    return answer, relay.stats()
