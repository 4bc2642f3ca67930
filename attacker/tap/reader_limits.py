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
- **a connection** holds at most ``CONNECTION_BUDGET_MESSAGES`` x M (two full
  calls) over all its open calls plus the partial frames it has buffered and its
  HPACK state (both tables, up to ``max_header_table_bytes`` each, and both
  decoded-block caches, ``DECODED_BLOCK_CACHE_BYTES`` each): without it, 1,000
  open calls each within its own budget could hold 1,000 budgets;
- **all connections together** hold at most ``TOTAL_BUDGET_MESSAGES`` x M (and
  never less than ``MIN_TOTAL_BYTES``): the bytes queued for the parser thread
  plus what every reader holds. Past it the relay gives up the capture of the
  connection holding the most (the heaviest), so that one heavy client cannot
  make an honest one that happens to send next lose its capture.

**Parse work.** Every connection shares one parser thread, and some bytes cost
it far more than others: a message may inflate to M (a gzip bomb: 64 MiB from
64 KB, 0.3 s of zlib), and a header block of one-byte references to table
entries costs pure-Python HPACK ~5 µs a field. That work is counted in *work
units* of about one inflated byte each (~4.5 ns) and paid for by the bytes on
the wire (``attacker.tap.parse_work`` keeps the accounts):

- each byte a connection sends earns it ``work_per_wire_byte`` units (32),
  banked up to ``work_burst`` (2 M): honest gzip of features inflates 1.1-4x
  (sparse activations ~7x), uncompressed messages cost nothing, so a
  connection that inflates more than 32x what it sends is given up once its
  allowance (below) is spent (``overworked_connections``), and however many
  connections send, all their inflating stays within the pool below plus 33
  units (~0.15 µs) per byte relayed;
- a header block pays for its own decoding with ``work_per_header_byte`` units
  (512) per byte of its frames, not banked (a cached block costs nothing, and
  would otherwise buy inflating): grpcio's blocks cost 150-410 units a byte of
  their frames even when they miss the decoded-block cache (the costliest, a
  health check's request, its ``grpc-timeout`` changing every call), a flood
  of one-byte indexed fields ~1,150; what a block costs beyond its own frames
  comes from the account, and decoding stops at the first field the account
  can no longer pay for;
- a new connection may spend a small ``work_allowance`` (1 MiB of units, ~5 ms)
  before its bytes paid for anything (a first message that compresses better
  than 32x). Allowances are lent from one pool shared by every connection,
  ``total_work`` units (64 allowances), which the bytes of all connections
  refill at ``POOL_WORK_PER_WIRE_BYTE`` (1) unit a byte: opening connection
  after connection, each with a fresh allowance, gets no more than the pool.
  While the pool is below half, a connection may draw from the other half only
  while it owes less than its fair share of it (that half over the connections
  being read), so that the connections that emptied it are given up before an
  honest one that needs a little.

Traffic that is expensive per byte without amplification (literal header
fields, ~130 units a byte) is bounded like any heavy traffic, by the byte
budgets above and the header rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cem.errors import ConfigError
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES

CALL_BUDGET_MESSAGES = 4  # a followed call holds at most this many largest messages at once
CONNECTION_BUDGET_MESSAGES = 8  # all the followed calls of one connection together: two full calls
TOTAL_BUDGET_MESSAGES = 16  # every connection's queued and held bytes together: two full connections
MIN_TOTAL_BYTES = 64 * 1024 * 1024  # the global budget never below this: the parser wakes every 50 ms, bytes pile up
WORK_BURST_MESSAGES = 2  # parse work a connection may bank, in largest messages inflated (two streams' at once)
TOTAL_WORK_ALLOWANCES = 64  # the pool every connection's starting allowance is lent from, in allowances
POOL_WORK_PER_WIRE_BYTE = 1  # what each byte on the wire, of any connection, puts back in that pool
# Decoded header blocks a direction keeps (h2_reader's cache), entries' overhead counted: counted as held too
DECODED_BLOCK_CACHE_BYTES = 16 * 1024
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
    work_per_wire_byte: int = 32  # parse work units one byte on the wire earns its connection
    work_per_header_byte: int = 512  # parse work units a header block's frame bytes pay towards decoding it
    work_allowance: int = 1 << 20  # parse work units a new connection may spend before its bytes paid for any
    max_work_burst: int | None = None  # parse work units a connection may bank
    max_total_work: int | None = None  # the pool every connection's allowance is lent from, in work units

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and value < 1:
                raise ConfigError(f"expected {name} >= 1, got {value}")

    @property
    def call_budget(self) -> int:
        return _given_or(self.max_call_bytes, CALL_BUDGET_MESSAGES * self.max_message_bytes)

    @property
    def connection_budget(self) -> int:
        return _given_or(self.max_connection_bytes, CONNECTION_BUDGET_MESSAGES * self.max_message_bytes)

    @property
    def total_budget(self) -> int:
        return _given_or(self.max_total_bytes, max(TOTAL_BUDGET_MESSAGES * self.max_message_bytes, MIN_TOTAL_BYTES))

    @property
    def work_burst(self) -> int:
        """By default two largest messages inflated: what a connection banks is what its own bytes earned, and a
        largest message compressed up to ``work_per_wire_byte`` times is paid for by its own bytes. Never below the
        allowance, which a connection starts with."""
        return max(_given_or(self.max_work_burst, WORK_BURST_MESSAGES * self.max_message_bytes), self.work_allowance)

    @property
    def total_work(self) -> int:
        return _given_or(self.max_total_work, TOTAL_WORK_ALLOWANCES * self.work_allowance)


def _given_or(value: int | None, derived: int) -> int:
    return derived if value is None else value


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
    dropped_after_stop: int = 0  # answered requests read after stop() stopped waiting for the parser: not offered

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class GiveUp(Exception):
    """The connection's capture is given up; ``counter``: the ``ReaderStats`` field that says why, if any."""

    counter: str | None = None


class OverBudget(GiveUp):
    """The connection's calls and buffers hold more than its budget. Giving it up (not the call that happened to
    grow last) is what keeps one client's open calls from holding many calls' budgets."""

    counter = "over_budget_connections"


class Overworked(GiveUp):
    """The connection caused more parse work than its bytes on the wire (and what it may borrow) pay for. Giving it
    up before the work is done is what keeps one client from holding the parser every connection shares."""

    counter = "overworked_connections"
