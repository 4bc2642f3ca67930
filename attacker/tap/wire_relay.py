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
(``attacker.tap.relay_budget``, with the limits of ``attacker.tap.reader_limits``):
counters compared on each chunk keep the total of all connections within the
global budget and the chunks queued within ``QUEUE_CHUNKS``. Past either, the
relay gives up the capture of the heaviest connection, not whichever happened
to send next (``evicted_connections``, ``dropped_chunks``); its bytes keep
flowing. Each reader keeps its own connection within its own byte budget and
its parse work within what its bytes pay for, the allowances of new connections
lent from one pool shared by all (``attacker.tap.parse_work``). Giving-up
warnings are rate-limited (``cem.logs.LimitedWarnings``): a hostile client opening
connection after connection must not flood the log.

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
queued, for at most ``parser_stop_s``; past it the recorder is closed, so what
the parser still reads is counted (``dropped_after_stop``), never offered. A
parser that fails (an exception no reader caught) logs it and gives up every
capture; the relay keeps forwarding.
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
from attacker.tap.h2_reader import CLIENT, SERVER, H2Reader, lost_log
from attacker.tap.parse_work import WorkPool
from attacker.tap.reader_limits import ReaderLimits, ReaderStats
from attacker.tap.relay_budget import QUEUE_CHUNKS, Connection, RelayBudget
from cem.errors import ConfigError
from cem.logs import LimitedWarnings
from cem.targets import parse_target

logger = logging.getLogger(__name__)

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
    discarded_connections: int = 0  # of those, connections whose queued chunks the parser skipped unread


class _UntilAbandoned:
    """The sink, until ``stop()`` stopped waiting for the parser: the recorder is closed then, so what the parser
    still reads is counted (``dropped_after_stop``) instead of offered to it."""

    def __init__(self, sink: CallSink, stats: ReaderStats) -> None:
        self._sink = sink
        self._stats = stats
        self.abandoned = False  # set by the event loop, read by the parser before each offer

    def offer(self, method: str, payload: bytes, response: bytes | None = None) -> bool:
        if self.abandoned:
            self._stats.dropped_after_stop += 1
            return False
        return self._sink.offer(method, payload, response)

    def count_rejected(self, requests: int = 1) -> None:
        if not self.abandoned:
            self._sink.count_rejected(requests)


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
        self.connection = Connection(next(relay._ids), skip=not relay._budget.capturing)
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

    def __init__(self, listen: str, upstream: str, sink: CallSink, max_message_bytes: int | None = None,
                 queue_chunks: int = QUEUE_CHUNKS, limits: ReaderLimits | None = None,
                 parser_stop_s: float = PARSER_STOP_S) -> None:
        """``limits``: every reader bound and budget, its ``max_message_bytes`` included; or ``max_message_bytes``
        alone, every bound derived from it (both at once is a ConfigError: one would be ignored)."""
        if limits is not None and max_message_bytes is not None:
            raise ConfigError("expected max_message_bytes or limits, not both: limits has its own max_message_bytes")
        self.listen = listen
        self.upstream = upstream
        self._upstream_host, self._upstream_port = parse_relay_upstream(upstream)
        if limits is None:
            limits = ReaderLimits() if max_message_bytes is None else ReaderLimits(max_message_bytes=max_message_bytes)
        self._limits = limits
        self._parser_stop_s = parser_stop_s
        self.relay_stats = RelayStats()
        self.reader_stats = ReaderStats()  # written by the parser thread only
        self._sink = _UntilAbandoned(sink, self.reader_stats)
        self.port: int | None = None
        self._budget = RelayBudget(limits.total_budget, queue_chunks, self._live, self._given_up, self._discarded)
        self._give_up_log = LimitedWarnings(logger, "connections given up by the relay's budget")  # event loop only
        self._discard_log = LimitedWarnings(logger, "backlogs discarded")  # event loop only
        # What every reader shares, on the parser thread only: the pool their parse-work allowances are lent from,
        # and their warnings (a reader warns once, when it gives its connection up)
        self._work_pool = WorkPool(limits)
        self._reader_log = lost_log()
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
        self._give_up_log.flush()
        self._discard_log.flush()
        logger.info("tap stopped")

    async def _stop_parser(self) -> None:
        """Let the parser read what is queued and stop; never waits longer than ``parser_stop_s``, after which the
        parser offers nothing more (the caller closes the recorder next)."""
        if not self._parser.is_alive():
            return
        self._budget.stop()  # never blocks
        await asyncio.to_thread(self._parser.join, self._parser_stop_s)
        if self._parser.is_alive():
            self._sink.abandoned = True
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
        self._budget.closed(pair.connection)

    def _hand_off(self, connection: Connection, direction: int, data: bytes) -> None:
        """Queue a copy of ``data`` for the parser; never waits. O(1) unless the budget is exceeded."""
        if connection.skip:
            if connection.given_up is not None:
                self.relay_stats.dropped_chunks += 1
            return
        if not self._budget.put(connection, direction, data):
            self.relay_stats.dropped_chunks += 1

    def _live(self) -> list[Connection]:
        """The connections open now (for a weighing)."""
        return [pair.connection for pair in self._pairs]

    def _given_up(self, connection: Connection, reason: str) -> None:
        """The budget gave ``connection``'s capture up: count it, and say so (rate-limited)."""
        self.relay_stats.evicted_connections += 1
        self._give_up_log.warning("connection %d: no longer captured, its bytes still flow: %s", connection.id, reason)

    def _discarded(self, connections: list[Connection], backlog: int, backlog_chunks: int) -> None:
        """The budget had the parser skip what ``connections`` (given up) still had queued: count it, and say so."""
        self.relay_stats.discarded_connections += len(connections)
        self._discard_log.warning(
            "%d connection(s) given up earlier still had %d bytes, %d chunks queued or held, over half the relay's "
            "budget: skipped unread (calls they had answered before and not yet read are not recorded)",
            len(connections), backlog, backlog_chunks)

    def _parse(self) -> None:
        """The parser thread: every connection's reader, fed in the order the chunks were forwarded.

        It wakes at most every ``PARSE_BATCH_S`` and then reads all that is queued, handing the GIL back to the
        forwarding loop between chunks. Whatever escapes it (each reader's errors are caught per connection) is
        logged and ends every capture, never the relay: nothing is queued any more and stop() does not wait.
        """
        readers: dict[int, H2Reader] = {}
        try:
            while True:
                batch = [self._budget.queue.get()]
                time.sleep(PARSE_BATCH_S)
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self._budget.queue.get_nowait())
                for item in batch:
                    if item is None:
                        return
                    self._parse_chunk(readers, *item)
                    time.sleep(0)  # lets the forwarding loop take the GIL if it waits for it
        except BaseException:  # anything at all: the relay keeps forwarding, and stop() must not wait for it
            logger.exception("the relay's parser failed: no connection is captured from here on; bytes still flow")
            self._parser_failed(readers)
        finally:  # the readers' warnings left out are summed up here, on the one thread that uses their log
            with contextlib.suppress(Exception):
                self._reader_log.flush()

    def _parser_failed(self, readers: dict[int, H2Reader]) -> None:
        """The parser thread's last act: count, give up every reader, and have the loop stop queueing."""
        self._budget.capturing = False
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
        self._budget.stop_queueing(self._live())

    def _parse_chunk(self, readers: dict[int, H2Reader], connection: Connection, direction: int,
                     data: bytes | None) -> None:
        reader = readers.get(connection.id)
        if reader is None:
            reader = readers[connection.id] = H2Reader(self._sink, self._limits, self.reader_stats,
                                                       f"connection {connection.id}", self._work_pool,
                                                       self._reader_log)
        self._budget.taken(connection, data)
        try:
            if connection.discard:  # its backlog is skipped: a lost reader reads nothing and lets go of all it held
                reader.lose(connection.given_up or "given up")
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
        self._budget.settled(connection, 0 if reader.lost or data is None else reader.held(), len(data or b""))
        if data is None:
            del readers[connection.id]

