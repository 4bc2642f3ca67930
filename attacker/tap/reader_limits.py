"""Every bound on what the relay tap's reading may hold and do, in one place, and its counters.

The relay (``attacker.tap.wire_relay``) forwards bytes it cannot refuse, so the
reading of a copy of them (``attacker.tap.h2_reader``, ``attacker.tap.grpc_calls``)
must stay bounded whatever a client sends: past a bound the tap gives up
*capturing* (a call, or a whole connection, counted in ``ReaderStats``), never
the bytes. The byte budgets all derive from ``max_message_bytes`` (M, the
cloud's own per-message limit, ``--max-message-bytes``), so one flag scales
them (at the default 64 MiB: 256 MiB, 512 MiB and 1 GiB):

- **a call** holds at most ``CALL_BUDGET_MESSAGES`` x M (its unanswered
  requests, a held answer, the messages being read): a stream may run a few
  requests ahead of its answers;
- **a connection** holds at most ``CONNECTION_BUDGET_MESSAGES`` x M over all its
  open calls plus the partial frames it has buffered (two full calls): without
  it, 1,000 open calls each within its own budget could hold 1,000 budgets;
- **all connections together** hold at most ``TOTAL_BUDGET_MESSAGES`` x M (and
  never less than ``MIN_TOTAL_BYTES``): the bytes queued for the parser thread
  plus what every reader holds. Past it the relay gives up the capture of the
  connection holding the most (the heaviest), so that one heavy client cannot
  make an honest one that happens to send next lose its capture.

**Parse work.** Every connection shares one parser thread, and some bytes cost
it far more than others: a message may inflate to M (a gzip bomb: 64 MiB from
64 KB, 0.3 s of zlib), and a header block of one-byte references to table
entries costs pure-Python HPACK ~5 µs a field. That work is counted in *work
units* of about one inflated byte each (~4.5 ns) and paid for by the
connection's bytes on the wire: each byte read earns ``work_per_wire_byte``
units (512), up to ``work_burst`` units may be banked, and a connection that
spends more is given up (``overworked_connections``) before it has held the
parser for long. Honest gRPC stays well below the rate: features compress a few
times at most, and the header blocks of the smallest calls (a health check,
~110 bytes both ways, its blocks missing the decoded-block cache because
``grpc-timeout`` changes the table) cost ~140 units a byte; a gzip bomb costs
~1,000 and a flood of indexed fields over 1,100. What the rate cannot tell
from a busy honest client is traffic that is expensive per byte without
amplification (literal header fields cost ~130 units a byte): that is bounded
like any heavy traffic, by the byte budgets above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cem.errors import ConfigError
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES

CALL_BUDGET_MESSAGES = 4  # a followed call holds at most this many largest messages at once
CONNECTION_BUDGET_MESSAGES = 8  # all the followed calls of one connection together: two full calls
TOTAL_BUDGET_MESSAGES = 16  # every connection's queued and held bytes together: two full connections
MIN_TOTAL_BYTES = 64 * 1024 * 1024  # the global budget never below this: the parser wakes every 50 ms, bytes pile up
WORK_BURST_MESSAGES = 2  # parse work a connection may bank, in largest messages inflated
# The estimated cost of decoding a header block that missed the decoded-block cache, in work units (~4.5 ns each,
# zlib's cost per inflated byte; measured for hpack 4 on the 2-core box): ~5 µs per field, ~0.6 µs per encoded
# byte (Huffman decoding of literals).
HEADER_FIELD_WORK = 1024
HEADER_BYTE_WORK = 128


@dataclass(frozen=True)
class ReaderLimits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # one message, on the wire and inflated: gRPC's own rule
    max_streams: int = 1000  # captured calls followed at once per connection
    max_header_block_bytes: int = 64 * 1024  # a header block, encoded and decoded (gRPC's own hard limit: 16 KiB)
    max_header_table_bytes: int = 64 * 1024  # the HPACK dynamic table a peer may ask for (gRPC's default: 4 KiB)
    # The budgets below: None means derived from max_message_bytes (the module's docstring says how and why).
    max_call_bytes: int | None = None  # what one followed call may hold at once
    max_connection_bytes: int | None = None  # what one connection's calls and buffered frames may hold together
    max_total_bytes: int | None = None  # what every connection may have queued for the parser or held, together
    work_per_wire_byte: int = 512  # parse work units one byte on the wire pays for
    max_work_burst: int | None = None  # parse work units a connection may bank

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and value < 1:
                raise ConfigError(f"expected {name} >= 1, got {value}")

    @property
    def call_budget(self) -> int:
        return self.max_call_bytes if self.max_call_bytes is not None else CALL_BUDGET_MESSAGES * self.max_message_bytes

    @property
    def connection_budget(self) -> int:
        if self.max_connection_bytes is not None:
            return self.max_connection_bytes
        return CONNECTION_BUDGET_MESSAGES * self.max_message_bytes

    @property
    def total_budget(self) -> int:
        if self.max_total_bytes is not None:
            return self.max_total_bytes
        return max(TOTAL_BUDGET_MESSAGES * self.max_message_bytes, MIN_TOTAL_BYTES)

    @property
    def work_burst(self) -> int:
        """By default two largest messages inflated plus the costliest header block (a field counts at least 32
        bytes against the block's decoded cap), so that no single honest message or block can overspend it."""
        if self.max_work_burst is not None:
            return self.max_work_burst
        worst_block = (HEADER_BYTE_WORK + HEADER_FIELD_WORK // 32) * self.max_header_block_bytes
        return WORK_BURST_MESSAGES * self.max_message_bytes + worst_block


@dataclass
class ReaderStats:
    """Counters of every reader of one relay; each is written by the one parser thread only."""

    lost_connections: int = 0  # connections no longer captured, for any reason (the counters below say some)
    streams_ignored: int = 0  # captured calls not followed: too many open on their connection
    oversized_calls: int = 0  # captured calls no longer followed: a message or their unanswered requests too large
    undecodable_messages: int = 0  # captured-method messages in an encoding the reader cannot undo
    refused_calls: int = 0  # captured calls the server refused unprocessed; gRPC retries them: not counted rejected
    over_budget_connections: int = 0  # connections given up: their calls and buffers held over their budget
    overworked_connections: int = 0  # connections given up: more parse work than their bytes on the wire pay for
    parser_failures: int = 0  # the parser thread failed: every capture given up from then on

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class GiveUp(Exception):
    """The connection's capture is given up; ``counter``: the ``ReaderStats`` field that says why, if any."""

    counter: str | None = None


class OverBudget(GiveUp):
    counter = "over_budget_connections"


class Overworked(GiveUp):
    counter = "overworked_connections"


class WorkBudget:
    """The parse work one connection may still cause, in work units: earned by its bytes on the wire, spent on
    inflating messages and decoding header blocks. Overspending raises ``Overworked``."""

    __slots__ = ("_cap", "_rate", "credit")

    def __init__(self, limits: ReaderLimits) -> None:
        self._cap = limits.work_burst
        self._rate = limits.work_per_wire_byte
        self.credit = self._cap

    def earn(self, wire_bytes: int) -> None:
        """``wire_bytes`` more arrived: what was banked is capped, then they pay for their own work."""
        self.credit = min(self.credit, self._cap) + wire_bytes * self._rate

    def spend(self, work: int, what: str) -> None:
        self.credit -= work
        if self.credit < 0:
            raise Overworked(f"{what}: more parse work than its {self._rate} units per byte on the wire pay for")
