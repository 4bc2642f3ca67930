"""The queue between the relay's event loop and its parser thread, and the global budget that bounds what enters it.

The relay (``attacker.tap.wire_relay``) hands a copy of every chunk it forwards
to one parser thread and never waits for it, so what waits for the parser or is
held by the readers is bounded here instead, by counters compared on each chunk
(O(1)): the bytes queued and not yet read plus what every reader holds stay
within ``ReaderLimits.total_budget``, and the chunks queued within
``queue_chunks``. Past either, the connections are *weighed* (a pass over them)
and the capture of the heaviest (the most bytes, or chunks, waiting or held) is
given up, which is most often the one that caused it, not whichever happened to
send next: it queues nothing more (its bytes keep flowing), the parser reads
what it had queued and then its reader lets go of all it held, connection open
or not. What the readers come to hold beyond the bytes they read (a message
inflates) uses the room a weighing found as bytes queued do, so growth brings
the next weighing.

What connections given up still have queued or held (the *backlog*) is not
weighed: it leaves as the parser reads it, so that calls they had answered
before are still recorded. Once a weighing finds what the connections given up
(and not discarded before) still have queued or held over half the budget or
half the chunk bound, the parser stops reading it: those connections are marked
``discard``, and the parser counts their chunks read without parsing them
(O(1) a chunk) and lets go of what their readers held at their next chunk. A
backlog is most often a hostile client's, heavy to parse by design (messages
that inflate, floods of small chunks); reading it would keep the parser, and so
the budget, busy with it. When a weighing finds the backlog over the whole
budget (discarded or not: it is memory until the parser has dequeued it), each
sender is given up without weighing, until the parser has read past that
weighing: otherwise the honest connection sending next would pay for
connections already given up. Skipping a discarded backlog shortens that
window; it does not remove it.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterable

from attacker.tap.grpc_calls import CLIENT

# Chunks that may wait for the parser (a chunk is what one read returned: up to 256 KiB in asyncio). Honest small
# calls make many small chunks: at 4,096, 64 edge clients with 40 calls each in one unread batch (a parser stall of
# about 0.35 s, as one large inflate can cause) already lost 13 honest connections for good; 65,536 entries cost
# about 13 MB of queue overhead, and the byte budgets still bound what they hold.
QUEUE_CHUNKS = 65_536
_GIVEN_UP = b""  # queued after a connection's last chunk when its capture is given up (no chunk is empty)


class Connection:
    """One relayed connection, as the event loop and the parser thread share it. Each counter has one writer."""

    __slots__ = ("discard", "given_up", "held", "id", "parsed_bytes", "parsed_chunks", "queued_bytes", "queued_chunks",
                 "skip")

    def __init__(self, connection_id: int, skip: bool = False) -> None:
        self.id = connection_id
        self.skip = skip  # queue nothing more of it (set by either thread, never cleared)
        self.given_up: str | None = None  # why the relay gave it up (event loop); ``queued_chunks`` is final then
        self.discard = False  # given up, and what it queued is skipped unread (event loop, never cleared)
        self.queued_chunks = self.queued_bytes = 0  # queued (event loop)
        self.parsed_chunks = self.parsed_bytes = 0  # taken off the queue (parser thread)
        self.held = 0  # bytes its reader holds (parser thread)

    def waiting(self) -> int:
        """Bytes it has queued and not yet read, or held."""
        return self.queued_bytes - self.parsed_bytes + self.held

    def waiting_chunks(self) -> int:
        return self.queued_chunks - self.parsed_chunks


# (connection, CLIENT or SERVER, a chunk or _GIVEN_UP; None: it closed); None alone: stop
Item = tuple[Connection, int, "bytes | None"]


class RelayBudget:
    """The parser's queue and the counters that bound it. ``live``: the connections open now; ``on_give_up``: told
    of each connection given up, ``on_discard``: of those whose backlog is skipped, with that backlog's bytes and
    chunks (to count and log them)."""

    def __init__(self, total_bytes: int, queue_chunks: int, live: Callable[[], Iterable[Connection]],
                 on_give_up: Callable[[Connection, str], None],
                 on_discard: Callable[[list[Connection], int, int], None]) -> None:
        self.queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()  # bounded by the counters below
        self.capturing = True  # False once the parser failed: nothing is queued any more
        self._total = total_bytes
        self._chunks = queue_chunks
        self._live = live
        self._on_give_up = on_give_up
        self._on_discard = on_discard
        # connections given up and not discarded, pruned to those with chunks still queued (event loop)
        self._backlog: list[Connection] = []
        self._prune_at = 64
        # Each counter is written by one thread only: queued by the event loop; parsed (taken off the queue) and
        # held (by the readers) by the parser. What waits is queued - parsed. Items count everything queued.
        self._queued_chunks = self._queued_bytes = self._queued_items = 0
        self._parsed_chunks = self._parsed_bytes = self._parsed_items = self._held_bytes = 0
        # What the readers came to hold beyond the bytes they read (messages inflated, per-message overhead), never
        # less for what they let go of (parser thread)
        self._grown_bytes = 0
        # ``_entered_bytes()`` and ``_queued_chunks`` up to which the connections followed fit, as the last weighing
        # found; ``_queued_items`` at the last weighing that found the backlog over the budget
        self._room_bytes = self._room_chunks = self._backlog_until = 0

    # The event loop's side

    def put(self, connection: Connection, direction: int, data: bytes) -> bool:
        """Queue a copy of ``data``; never waits. False when it was not queued: ``connection`` was given up for it.
        O(1) unless the budget is exceeded and the room the last weighing found is used up."""
        size = len(data)
        waiting = self._queued_bytes - self._parsed_bytes + self._held_bytes
        if ((waiting + size > self._total or self._queued_chunks - self._parsed_chunks >= self._chunks)
                and not self._admit(connection, size)):
            return False
        connection.queued_chunks += 1
        connection.queued_bytes += size
        self._queued_chunks += 1
        self._queued_bytes += size
        self._queued_items += 1
        self.queue.put((connection, direction, data))
        return True

    def give_up(self, connection: Connection, reason: str) -> None:
        """Queue nothing more of ``connection``, and tell the parser after what it had queued: its reader lets go of
        what it holds then, not when the connection closes (an idle edge channel stays open for hours, and what it
        held would count against the budget all along)."""
        connection.given_up = reason
        connection.skip = True
        self._backlog.append(connection)
        if len(self._backlog) > self._prune_at:
            self._prune_backlog()
        self._on_give_up(connection, reason)
        self._mark((connection, CLIENT, _GIVEN_UP))

    def closed(self, connection: Connection) -> None:
        """Tell the parser the connection ended, after all its chunks (queued past every bound: it frees a reader)."""
        self._mark((connection, CLIENT, None))

    def stop(self) -> None:
        self.queue.put(None)

    def stop_queueing(self, connections: Iterable[Connection]) -> None:
        """Once the parser failed: skip every connection, drop what waits for nobody, count it all read."""
        self.capturing = False
        for connection in connections:
            connection.skip = True
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self._parsed_chunks, self._parsed_bytes, self._held_bytes = self._queued_chunks, self._queued_bytes, 0
        self._parsed_items = self._queued_items

    def _mark(self, item: Item) -> None:
        if self.capturing:
            self._queued_items += 1
            self.queue.put(item)

    def _entered_bytes(self) -> int:
        """Bytes that entered the budget so far, never less for what left it: queued, and grown in the readers."""
        return self._queued_bytes + self._grown_bytes

    def _admit(self, incoming: Connection, size: int) -> bool:
        """The counters say a bound is exceeded, counting the backlog (what connections given up still have queued or
        held: they queue nothing more, and the parser reads what they had queued, so calls answered before are still
        recorded, unless it was discarded, then forgets them). Whether ``incoming`` may queue ``size`` more bytes.

        The connections still followed are weighed (``_make_room``) only once the room the last weighing found is
        used up, so a relay kept over its bound pays O(1) per chunk, not O(connections). The room is used up by what
        entered the budget since, readers' growth included. What readers let go of makes no room until the next
        weighing (most of it is what the connections given up held, which that weighing counted gone already).
        """
        if self._entered_bytes() + size <= self._room_bytes and self._queued_chunks < self._room_chunks:
            return True
        if self._parsed_items < self._backlog_until:
            self._room_bytes = self._room_chunks = 0
            self.give_up(incoming, "the connections given up before still had more queued or held than the "
                                   "budget, not yet read")
            return False
        return self._make_room(incoming, size)

    def _make_room(self, incoming: Connection, size: int) -> bool:
        """Weigh the connections still followed: give up the heaviest until they and the chunk of ``size`` bytes
        that ``incoming`` brings fit the budget and the chunk bound; False when ``incoming`` itself was given up.
        What the connections given up still hold is discarded past half the budget (``_discard_heavy_backlog``); a
        backlog over the whole budget even so gives up ``incoming`` at once, and every sender after it until the
        parser has read as far as this weighing."""
        live = {connection for connection in self._live() if not connection.skip} | {incoming}
        weights = {connection: connection.waiting() for connection in live}
        chunks = {connection: connection.waiting_chunks() for connection in live}
        used, queued = sum(weights.values()), sum(chunks.values())
        backlog = self._queued_bytes - self._parsed_bytes + self._held_bytes - used
        backlog_chunks = self._queued_chunks - self._parsed_chunks - queued
        self._discard_heavy_backlog()
        if backlog > self._total or backlog_chunks > self._chunks:
            self._backlog_until = self._queued_items
            self._room_bytes = self._room_chunks = 0
            self.give_up(incoming, f"the connections given up before still had {backlog} bytes, {backlog_chunks} "
                                   f"chunks queued or held, over the relay's {self._total}-byte, {self._chunks}-chunk "
                                   "budget, not yet read")
            return False
        weights[incoming] += size
        chunks[incoming] += 1
        used, queued = used + size, queued + 1
        while used > self._total or queued > self._chunks:
            measure = weights if used > self._total else chunks
            heaviest = max(live, key=measure.__getitem__)
            live.discard(heaviest)
            used -= weights[heaviest]
            queued -= chunks[heaviest]
            self.give_up(heaviest, f"it was the heaviest ({weights[heaviest]} bytes, {chunks[heaviest]} chunks "
                                   f"waiting or held) when the relay's {self._total}-byte, {self._chunks}-chunk "
                                   "budget was exceeded")
            if heaviest is incoming:
                self._room_bytes = self._room_chunks = 0
                return False
        # the room left, as the totals (of every connection) it lasts until
        self._room_bytes = self._entered_bytes() + size + self._total - used
        self._room_chunks = self._queued_chunks + 1 + self._chunks - queued
        return True

    def _prune_backlog(self) -> None:
        """Keep the connections given up that still have chunks for the parser to read (O(their number), at most
        once per doubling of the list)."""
        self._backlog = [connection for connection in self._backlog if connection.waiting_chunks()]
        self._prune_at = 2 * len(self._backlog) + 64

    def _discard_heavy_backlog(self) -> None:
        """Once what the connections given up, and not discarded before, still have queued or held passes half the
        budget or half the chunk bound, have the parser skip it unread and let go of it."""
        self._prune_backlog()
        pending = sum(connection.waiting() for connection in self._backlog)
        pending_chunks = sum(connection.waiting_chunks() for connection in self._backlog)
        if 2 * pending <= self._total and 2 * pending_chunks <= self._chunks:
            return
        discarded, self._backlog = self._backlog, []
        for connection in discarded:
            connection.discard = True
        self._on_discard(discarded, pending, pending_chunks)

    # The parser thread's side

    def taken(self, connection: Connection, data: bytes | None) -> None:
        """The parser took ``data`` (a chunk, _GIVEN_UP or None) of ``connection`` off the queue."""
        if data:  # a chunk: not _GIVEN_UP, not a close, which were never counted queued
            connection.parsed_chunks += 1
            connection.parsed_bytes += len(data)
            self._parsed_chunks += 1
            self._parsed_bytes += len(data)

    def settled(self, connection: Connection, held: int, read: int) -> None:
        """The parser is done with an item of ``connection``: its reader, having read ``read`` bytes, holds ``held``."""
        self._grown_bytes += max(0, held - connection.held - read)
        self._held_bytes += held - connection.held
        connection.held = held
        self._parsed_items += 1
