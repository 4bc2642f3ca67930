"""Who pays for the relay parser's work: one account per connection, and the pool their allowances are lent from.

Every connection shares one parser thread, so the work a connection's bytes
cause it (inflating messages, decoding header blocks, in the work units of
``attacker.tap.reader_limits``) must be paid for, or one client could hold the
parser every other connection waits for. A connection pays with what its own
bytes on the wire earned (``WorkBudget``), and a new one, whose bytes paid for
nothing yet, with a small allowance lent from a pool every connection shares
(``WorkPool``): without the pool, each new connection would bring a fresh
allowance, and opening many would add them up. Work is refused *before* it is
done: inflating stops at what the connection can pay, and header decoding at
the field it can no longer pay for (``attacker.tap.h2_reader``).

Both are used by the parser thread only.
"""

from __future__ import annotations

from attacker.tap.reader_limits import HEADER_FIELD_WORK, POOL_WORK_PER_WIRE_BYTE, Overworked, ReaderLimits


class WorkPool:
    """The parse work the relay's connections may do beyond what their own bytes paid for, together: a token bucket
    of ``total_work`` units that every byte on the wire, of any connection, refills a little
    (``POOL_WORK_PER_WIRE_BYTE``), and that every connection's starting allowance is drawn from.

    Half of it is a reserve: while the pool is below half, a connection may take from it only while it owes less
    than its fair share of that half (the half over the connections being read). The connections that emptied the
    pool owe their whole allowance and are refused; an honest connection that needs a little still gets it.
    """

    __slots__ = ("_capacity", "_reserve", "accounts", "tokens")

    def __init__(self, limits: ReaderLimits) -> None:
        self._capacity = limits.total_work
        self._reserve = self._capacity // 2
        self.tokens = self._capacity
        self.accounts = 0  # connections being read, each with a WorkBudget drawing on this pool

    def refill(self, wire_bytes: int) -> None:
        self.tokens = min(self._capacity, self.tokens + wire_bytes * POOL_WORK_PER_WIRE_BYTE)

    def lendable(self, owed: int) -> int:
        """What the pool would lend a connection that owes it ``owed`` units already."""
        free = max(0, self.tokens - self._reserve)
        fair = self._reserve // max(1, self.accounts) - owed - free
        return free + max(0, min(self.tokens - free, fair))


class WorkBudget:
    """The parse work one connection may still cause, in work units: ``credit`` is what its bytes on the wire earned
    (``work_per_wire_byte`` each, banked up to ``work_burst``) plus what is left of its starting allowance. What it
    spends of that allowance is drawn from the pool, as far as the pool lends it; what it earns back (its credit
    rising to the allowance again) is its own to owe again. Overspending raises ``Overworked``."""

    __slots__ = ("_allowance", "_cap", "_header_rate", "_pool", "_rate", "_retired", "credit")

    def __init__(self, limits: ReaderLimits, pool: WorkPool) -> None:
        self._allowance = limits.work_allowance
        self._cap = limits.work_burst
        self._rate = limits.work_per_wire_byte
        self._header_rate = limits.work_per_header_byte
        self._pool = pool
        self._retired = False
        self.credit = self._allowance
        pool.accounts += 1

    def earn(self, wire_bytes: int) -> None:
        """``wire_bytes`` more arrived: what was banked is capped, then they pay for their own work."""
        self.credit = min(self.credit, self._cap) + wire_bytes * self._rate
        self._pool.refill(wire_bytes)

    def block_allowance(self, frame_bytes: int) -> int:
        """What the ``frame_bytes`` bytes of a header block's frames pay towards decoding that block only."""
        return frame_bytes * self._header_rate

    def available(self) -> int:
        """What it may spend now: its own earnings, then what is left of its allowance, as far as the pool lends."""
        left = min(self.credit, self._allowance)
        return self.credit - left + min(left, self._pool.lendable(self._allowance - left))

    def fields_payable(self, free: int) -> int:
        """How many header fields it can pay for, with ``free`` units of their block's own allowance left."""
        return (free + self.available()) // HEADER_FIELD_WORK

    def spend(self, work: int, what: str, free: int = 0, done: bool = False) -> int:
        """Pay ``work`` units, from ``free`` (a header block's own allowance) first; returns what is left of
        ``free``. Raises ``Overworked`` when the rest is more than it may spend: having spent nothing, or, when the
        work was ``done`` already (inflating stops one byte past what it may spend), all it could."""
        covered = min(free, work)
        work -= covered
        available = self.available()
        if work <= available or done:
            owed = max(0, self._allowance - self.credit)
            self.credit -= min(work, available)
            self._pool.tokens -= max(0, self._allowance - self.credit) - owed
        if work > available:
            raise Overworked(f"{what}: more parse work than its bytes on the wire pay for ({work} units, "
                             f"{available} available)")
        return free - covered

    def retire(self) -> None:
        """The connection is no longer read: it stops counting towards the pool's fair shares (what it drew stays
        drawn until bytes refill the pool, so reconnecting gets no fresh allowance)."""
        if not self._retired:
            self._retired = True
            self._pool.accounts -= 1
