"""``cem-tap --mode relay``: a TCP byte relay that reads the gRPC calls off a copy of the bytes it forwards.

Each accepted connection gets one TCP connection to the upstream (a *pair* of
*legs*), and the bytes move both ways unchanged (Nagle off on both legs): each
chunk a leg receives is written on the other leg at once and then put on a
queue. One parser thread drains the queue and feeds each connection's
``H2Reader`` (``attacker.tap.h2_reader``), which hands answered feature
requests to the ``CaptureRecorder``. So nothing is parsed on the forwarding
path and the relay never waits for the parser. The parser reads in batches
(``PARSE_BATCH_S``): captures are written in batches anyway, and one wake-up per
batch instead of per chunk nearly halves what reading costs the box.

What waits for the parser or is held by the readers is bounded
(``attacker.tap.reader_limits``): two counters per side, compared on each chunk,
keep the total of all connections within the global budget and the chunks
queued within ``QUEUE_CHUNKS``. Past either, the relay gives up the capture of
the heaviest connection (the most bytes, or chunks, waiting or held), which is
most often the one that caused it, not whichever happened to send next: it
queues nothing more (its bytes keep flowing), the parser reads what it had
queued and then its reader lets go of all it held, connection open or not
(``evicted_connections``, ``dropped_chunks``). What the readers come to hold
beyond the bytes they read (a message inflates) uses the room up as the bytes
queued do. Each reader keeps its own connection within its own byte and
parse-work budgets.

The legs are asyncio protocols rather than stream reader/writer copy loops: a
chunk goes out from the callback that received it, with no task switch per
chunk (with parsing switched off, 0.04-0.15 ms less per unary call than the
benchmark's copy-loop relay in the same runs); a leg whose writes back up
pauses reading on the other leg until they drain.

Why a second mode: terminating gRPC (``--mode proxy``, grpc.aio) costs about
1 ms per unary call on the forwarding path on the 2-core box, a byte relay
about 0.3 ms (docs/benchmarks.md, "Channel tap overhead"). What a relay cannot
do, by construction: refuse a call (so no ``--on-store-failure refuse``),
answer the ``cem.tap`` health check in band (every health check reaches the
cloud; the tap's own state is on ``--metrics-listen``), spread calls over
replicas (it dials one ``HOST:PORT`` per edge connection), or read TLS (neither
mode terminates it).

A side that shuts its sending half has that half shut towards the other side
while the other direction keeps flowing; a connection is closed once both
directions are done, or at once when either side fails. An unreachable upstream
closes the edge's connection, which the edge sees as UNAVAILABLE, as with a
dead cloud. Stopping: no new connections, open ones get ``grace`` seconds (an
edge's idle channel keeps its connection open, so with an edge connected a stop
takes the whole grace), then both legs are closed and the parser drains what is
queued, for at most ``parser_stop_s``. A parser that fails (an exception no
reader caught) logs it and gives up every capture; the relay keeps forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass

from attacker.tap.grpc_calls import CallSink
from attacker.tap.h2_reader import CLIENT, SERVER, H2Reader
from attacker.tap.reader_limits import ReaderLimits, ReaderStats
from cem.errors import ConfigError
from cem.targets import parse_target
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

# Chunks that may wait for the parser (a chunk is what one read returned: up to 256 KiB in asyncio); the bytes
# waiting or held are bounded by ReaderLimits.total_budget. Past either, the heaviest connection is given up.
QUEUE_CHUNKS = 4096
PARSER_STOP_S = 30.0  # how long stop() waits for the parser to read what is queued
# The parser wakes at most this often and reads everything queued. Woken for every chunk it spent 0.37 ms of
# CPU per unary call (plus 0.22 ms in the capture writer, woken per capture), mostly on caches gone cold since
# the last chunk; every 50 ms, 0.20 and 0.14 ms, and the relay tap's added latency fell to the bare TCP relay's.
PARSE_BATCH_S = 0.05


@dataclass
class RelayStats:
    """The relay's own counters; each is written on the event loop only."""

    connections: int = 0  # edge connections accepted
    upstream_failures: int = 0  # edge connections closed because the upstream could not be reached
    dropped_chunks: int = 0  # chunks not handed to the parser: the relay had given up their connection's capture
    evicted_connections: int = 0  # captures given up, heaviest first, to stay within the global budget


class _Connection:
    """One relayed connection, as the event loop and the parser thread share it. Each counter has one writer."""

    __slots__ = ("given_up", "held", "id", "parsed_bytes", "parsed_chunks", "queued_bytes", "queued_chunks", "skip")

    def __init__(self, connection_id: int, skip: bool = False) -> None:
        self.id = connection_id
        self.skip = skip  # queue nothing more of it (set by either thread, never cleared)
        self.given_up: str | None = None  # why the relay gave it up (event loop); ``queued_chunks`` is final then
        self.queued_chunks = self.queued_bytes = 0  # queued (event loop)
        self.parsed_chunks = self.parsed_bytes = 0  # taken off the queue (parser thread)
        self.held = 0  # bytes its reader holds (parser thread)

    def waiting(self) -> int:
        """Bytes it has queued and not yet read, or held."""
        return self.queued_bytes - self.parsed_bytes + self.held

    def waiting_chunks(self) -> int:
        return self.queued_chunks - self.parsed_chunks


_GIVEN_UP = b""  # queued after a connection's last chunk when the relay gives its capture up (no chunk is empty)
_Item = tuple[_Connection, int, "bytes | None"]  # (connection, CLIENT or SERVER, a chunk or _GIVEN_UP; None: it closed)


def parse_relay_upstream(upstream: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) -> (host, port); a ConfigError for any other target form."""
    target = parse_target(upstream, "--upstream")
    if target.lists_several_addresses:
        raise ConfigError(f"expected --upstream to be one HOST:PORT in relay mode, got {upstream!r}, which lists "
                          "several replicas: use --mode proxy to spread calls over replicas")
    if target.scheme != "dns" or target.addresses != (upstream,):
        raise ConfigError(f"expected --upstream to be one HOST:PORT in relay mode, got {upstream!r}: "
                          "--mode proxy takes any gRPC target")
    host, _, port = upstream.rpartition(":")
    return host.strip("[]"), int(port)


class _Pair:
    """One relayed connection: the edge's leg, the upstream's leg once dialled, and the parser's view of it."""

    def __init__(self, relay: WireRelay) -> None:
        self.relay = relay
        self.connection = _Connection(next(relay._ids), skip=not relay._capturing)
        self.client = _Leg(self, CLIENT)
        self.upstream = _Leg(self, SERVER)
        self.dial: asyncio.Task[None] | None = None
        self.done = asyncio.get_running_loop().create_future()

    def legs(self) -> tuple[_Leg, _Leg]:
        return self.client, self.upstream


class _Leg(asyncio.Protocol):
    """One TCP connection of a pair. What it receives is written on the other leg at once and then handed to the
    parser; while its own writes are backed up, the other leg stops reading (flow control both ways)."""

    def __init__(self, pair: _Pair, direction: int) -> None:
        self.pair = pair
        self.direction = direction  # CLIENT: this leg receives what the edge sends
        self.transport: asyncio.Transport | None = None
        self.peer: _Leg | None = None  # set once both legs are connected
        self.got_eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        with contextlib.suppress(OSError):  # a side that is gone already is seen as lost right after
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pair.relay._leg_made(self)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)
        self.pair.relay._hand_off(self.pair.connection, self.direction, data)  # after the write: bytes go first

    def eof_received(self) -> bool:
        """The sender shut its half: shut the same half towards the other side, keep the other direction open."""
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.transport.can_write_eof() and not peer.transport.is_closing():
            peer.transport.write_eof()
        if peer.got_eof:  # both directions are done
            peer.transport.close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pair.relay._leg_lost(self, exc)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class WireRelay:
    """The relay bound to ``listen`` (HOST:PORT, port 0: any free port) forwarding to ``upstream`` (HOST:PORT);
    start/stop inside an event loop."""

    def __init__(self, listen: str, upstream: str, sink: CallSink, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 queue_chunks: int = QUEUE_CHUNKS, limits: ReaderLimits | None = None,
                 parser_stop_s: float = PARSER_STOP_S) -> None:
        """``limits``: every reader bound and budget; by default all derived from ``max_message_bytes``."""
        self.listen = listen
        self.upstream = upstream
        self._upstream_host, self._upstream_port = parse_relay_upstream(upstream)
        self._sink = sink
        self._limits = limits if limits is not None else ReaderLimits(max_message_bytes=max_message_bytes)
        self._total_budget = self._limits.total_budget
        self._queue_chunks = queue_chunks
        self._parser_stop_s = parser_stop_s
        self.relay_stats = RelayStats()
        self.reader_stats = ReaderStats()  # written by the parser thread only
        self.port: int | None = None
        # Unbounded as a queue: what enters it is bounded by the counters below (None: stop)
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        # Each counter is written by one thread only: queued by the event loop, parsed (taken off the queue) and
        # held (by the readers) by the parser. What waits is queued - parsed.
        self._queued_chunks = self._queued_bytes = 0
        self._parsed_chunks = self._parsed_bytes = self._held_bytes = 0
        # What the readers came to hold beyond the bytes they read (messages inflated, per-message overhead), never
        # less for what they let go of (parser thread)
        self._grown_bytes = 0
        # ``_entered_bytes()`` and ``_queued_chunks`` up to which the connections followed fit, as the last pass found
        self._room_bytes = self._room_chunks = 0
        self._capturing = True  # False once the parser failed: nothing is queued any more
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parser = threading.Thread(target=self._parse, name="relay-parser", daemon=True)
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._pairs: set[_Pair] = set()

    def stats(self) -> dict[str, int]:
        """Every relay counter (``RelayStats`` and ``ReaderStats``), as read now."""
        return {**asdict(self.relay_stats), **self.reader_stats.to_dict()}

    async def start(self) -> int:
        """Bind and start relaying; returns the bound port (useful with port 0)."""
        host, _, port = self.listen.rpartition(":")
        loop = self._loop = asyncio.get_running_loop()
        self._parser.start()
        try:
            self._server = await loop.create_server(lambda: _Pair(self).client, host.strip("[]"), int(port))
        except OSError as exc:
            await self._stop_parser()
            raise OSError(f"could not bind the tap to {self.listen}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("tap relaying port %d to %s", self.port, self.upstream)
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give open connections ``grace_s``, close the rest, then let the parser drain."""
        if self._server is not None:
            self._server.close()
        if self._pairs:
            await asyncio.wait({pair.done for pair in self._pairs}, timeout=grace_s)
        for pair in list(self._pairs):
            if pair.dial is not None:
                pair.dial.cancel()
            for leg in pair.legs():
                if leg.transport is not None:
                    leg.transport.abort()
        if self._pairs:
            await asyncio.wait({pair.done for pair in self._pairs})
        if self._server is not None:
            await self._server.wait_closed()
        await self._stop_parser()
        logger.info("tap stopped")

    async def _stop_parser(self) -> None:
        """Let the parser read what is queued and stop; never waits longer than ``parser_stop_s``."""
        if not self._parser.is_alive():
            return
        self._queue.put(None)  # never blocks
        await asyncio.to_thread(self._parser.join, self._parser_stop_s)
        if self._parser.is_alive():
            logger.error("the parser did not stop within %.0f s: what it had not read is not captured",
                         self._parser_stop_s)

    def _leg_made(self, leg: _Leg) -> None:
        pair = leg.pair
        if leg is pair.client:  # an edge connected: hold its bytes until the upstream is there to take them
            assert leg.transport is not None
            leg.transport.pause_reading()
            self._pairs.add(pair)
            self.relay_stats.connections += 1
            pair.dial = asyncio.ensure_future(self._dial(pair))
            return
        client = pair.client
        if client.lost or client.transport is None:  # the edge left while the upstream was being dialled
            assert leg.transport is not None
            leg.transport.close()
            return
        client.peer, leg.peer = leg, client
        client.transport.resume_reading()

    async def _dial(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: pair.upstream, self._upstream_host, self._upstream_port)
        except OSError as exc:
            self.relay_stats.upstream_failures += 1
            logger.warning("connection %d: the upstream %s is unreachable (%s); closing the edge's connection",
                           pair.connection.id, self.upstream, exc)
            if pair.client.transport is not None:
                pair.client.transport.close()
        except asyncio.CancelledError:
            if pair.client.lost:  # the edge left first (or the relay is stopping): nothing else will end the pair
                self._end(pair)
            raise
        finally:
            pair.dial = None

    def _leg_lost(self, leg: _Leg, exc: Exception | None) -> None:
        """One leg closed: close the other (flushing it, unless this one failed); the pair ends with both."""
        pair = leg.pair
        other = pair.upstream if leg is pair.client else pair.client
        if exc is not None:
            logger.debug("connection %d: a leg failed: %s", pair.connection.id, exc)
        if other.transport is not None and not other.lost:
            if exc is None:
                other.transport.close()
            else:
                other.transport.abort()
            return
        if leg is pair.client and pair.dial is not None:
            pair.dial.cancel()
            return  # the pair ends when the cancelled dial lets go of it
        self._end(pair)

    def _end(self, pair: _Pair) -> None:
        if pair.done.done():
            return
        self._pairs.discard(pair)
        pair.done.set_result(None)
        self._hand_off_close(pair.connection)

    def _hand_off(self, connection: _Connection, direction: int, data: bytes) -> None:
        """Queue a copy of ``data`` for the parser; never waits. O(1) unless a budget is exceeded."""
        if connection.skip:
            if connection.given_up is not None:
                self.relay_stats.dropped_chunks += 1
            return
        size = len(data)
        waiting = self._queued_bytes - self._parsed_bytes + self._held_bytes
        if ((waiting + size > self._total_budget or self._queued_chunks - self._parsed_chunks >= self._queue_chunks)
                and not self._admit(connection, size, waiting)):
            self.relay_stats.dropped_chunks += 1
            return
        self._queue.put((connection, direction, data))
        connection.queued_chunks += 1
        connection.queued_bytes += size
        self._queued_chunks += 1
        self._queued_bytes += size

    def _admit(self, incoming: _Connection, size: int, waiting: int) -> bool:
        """The counters say a bound is exceeded (``waiting``: the bytes queued and not yet read, or held, of every
        connection), counting what connections given up still have queued (they queue nothing more; the parser
        reads what they had queued, so calls answered before are still recorded, then forgets them). Whether
        ``incoming`` may queue ``size`` more bytes, giving up the heaviest if need be.

        Those bytes count against a hard bound of twice the budget, past which nothing more is queued. Within it,
        the connections still followed are weighed (a pass over them, ``_make_room``) only once the room the last
        pass found is used up, so a relay kept over its bound pays O(1) per chunk, not O(connections). The room is
        used up by what entered the budget since (``_entered_bytes``), readers' growth included: unseen, a message
        inflating in a reader went on until the hard bound gave up whichever connection sent next. What readers let
        go of makes no room until the next pass (most of it is what the connections given up held, which the pass
        counted gone already).
        """
        if (waiting + size > 2 * self._total_budget
                or self._queued_chunks - self._parsed_chunks >= 2 * self._queue_chunks):
            self._give_up(incoming, "what connections given up before had queued is still being read")
            return False
        if self._entered_bytes() + size <= self._room_bytes and self._queued_chunks < self._room_chunks:
            return True
        return self._make_room(incoming, size)

    def _make_room(self, incoming: _Connection, size: int) -> bool:
        """Give up the heaviest connections still followed until they and the chunk of ``size`` bytes that
        ``incoming`` brings fit the budget and the chunk bound; False when ``incoming`` itself was given up."""
        live = {pair.connection for pair in self._pairs if not pair.connection.skip} | {incoming}
        weights = {connection: connection.waiting() for connection in live}
        chunks = {connection: connection.waiting_chunks() for connection in live}
        weights[incoming] += size
        chunks[incoming] += 1
        used, queued = sum(weights.values()), sum(chunks.values())
        while used > self._total_budget or queued > self._queue_chunks:
            measure = weights if used > self._total_budget else chunks
            heaviest = max(live, key=measure.__getitem__)
            live.discard(heaviest)
            used -= weights[heaviest]
            queued -= chunks[heaviest]
            self._give_up(heaviest, f"it was the heaviest ({weights[heaviest]} bytes, {chunks[heaviest]} chunks "
                                    f"waiting or held) when the relay's {self._total_budget}-byte, "
                                    f"{self._queue_chunks}-chunk budget was exceeded")
            if heaviest is incoming:
                self._room_bytes = self._room_chunks = 0
                return False
        # the room left, as the totals (of every connection) it lasts until
        self._room_bytes = self._entered_bytes() + size + self._total_budget - used
        self._room_chunks = self._queued_chunks + 1 + self._queue_chunks - queued
        return True

    def _entered_bytes(self) -> int:
        """Bytes that entered the budget so far, never less for what left it: queued, and grown in the readers."""
        return self._queued_bytes + self._grown_bytes

    def _give_up(self, connection: _Connection, reason: str) -> None:
        """Queue nothing more of ``connection``, and tell the parser after what it had queued: its reader lets go of
        what it holds then, not when the connection closes (an idle edge channel stays open for hours, and what it
        held would count against the global budget all along)."""
        connection.given_up = reason
        connection.skip = True
        self.relay_stats.evicted_connections += 1
        logger.warning("connection %d: no longer captured, its bytes still flow: %s", connection.id, reason)
        if self._capturing:
            self._queue.put((connection, CLIENT, _GIVEN_UP))

    def _hand_off_close(self, connection: _Connection) -> None:
        """Tell the parser the connection ended, after all its chunks (queued past every bound: it frees a reader)."""
        if self._capturing:
            self._queue.put((connection, CLIENT, None))

    def _parse(self) -> None:
        """The parser thread: every connection's reader, fed in the order the chunks were forwarded.

        It wakes at most every ``PARSE_BATCH_S`` and then reads all that is queued, handing the GIL back to the
        forwarding loop between chunks. Whatever escapes it (each reader's errors are caught per connection) is
        logged and ends every capture, never the relay: nothing is queued any more and stop() does not wait.
        """
        readers: dict[int, H2Reader] = {}
        try:
            while True:
                batch = [self._queue.get()]
                time.sleep(PARSE_BATCH_S)
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self._queue.get_nowait())
                for item in batch:
                    if item is None:
                        return
                    self._parse_chunk(readers, *item)
                    time.sleep(0)  # lets the forwarding loop take the GIL if it waits for it
        except BaseException:  # anything at all: the relay keeps forwarding, and stop() must not wait for it
            logger.exception("the relay's parser failed: no connection is captured from here on; bytes still flow")
            self._parser_failed(readers)

    def _parser_failed(self, readers: dict[int, H2Reader]) -> None:
        """The parser thread's last act: count, give up every reader, and have the loop stop queueing."""
        self._capturing = False
        self.reader_stats.parser_failures += 1
        for reader in readers.values():
            with contextlib.suppress(Exception):
                reader.lose("the parser failed")
        readers.clear()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is queued any more anyway
                self._loop.call_soon_threadsafe(self._stop_queueing)

    def _stop_queueing(self) -> None:
        """On the event loop, once the parser failed: skip every connection and drop what waits for nobody."""
        for pair in self._pairs:
            pair.connection.skip = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._parsed_chunks, self._parsed_bytes, self._held_bytes = self._queued_chunks, self._queued_bytes, 0

    def _parse_chunk(self, readers: dict[int, H2Reader], connection: _Connection, direction: int,
                     data: bytes | None) -> None:
        reader = readers.get(connection.id)
        if reader is None:
            reader = readers[connection.id] = H2Reader(self._sink, self._limits, self.reader_stats,
                                                       name=f"connection {connection.id}")
        if data:  # a chunk: not _GIVEN_UP, not a close, which were never counted queued
            connection.parsed_chunks += 1
            connection.parsed_bytes += len(data)
            self._parsed_chunks += 1
            self._parsed_bytes += len(data)
        try:
            if data:
                reader.feed(direction, data)
            if connection.given_up is not None and connection.parsed_chunks >= connection.queued_chunks:
                reader.lose(connection.given_up)  # what it queued before is read: nothing after it was queued
            if data is None:
                reader.close()
        except Exception:  # a reader bug must not end the capture of every other connection
            logger.exception("connection %d: the reader failed", connection.id)
            reader.lose("the reader failed")
        if reader.lost:
            connection.skip = True  # the reader ignores what follows: not worth queueing
        held = 0 if reader.lost or data is None else reader.held()
        self._grown_bytes += max(0, held - connection.held - len(data or b""))
        self._held_bytes += held - connection.held
        connection.held = held
        if data is None:
            del readers[connection.id]
