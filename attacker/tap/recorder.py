"""Recording off the forwarding path: a bounded queue drained by one writer thread.

The proxy calls :meth:`CaptureRecorder.offer` with the raw request bytes; that
is a non-blocking ``put_nowait`` and nothing more. Parsing, batching and disk
I/O happen on the writer thread. When the disk is slow the queue fills and new
captures are dropped; when it fails the batch in hand is dropped. Either way
the drop is counted and logged and traffic is never delayed or refused.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass

from google.protobuf.message import DecodeError

from attacker.tap.records import CaptureRecord, InvalidCaptureError, parse_capture
from attacker.tap.store import CaptureWriter
from cem.errors import ConfigError

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class RecorderConfig:
    max_queue: int = 4096  # requests waiting for the disk before new ones are dropped
    batch_records: int = 64  # records per shard at most
    flush_interval_s: float = 0.25  # a partial batch is written after this long

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ConfigError(f"expected max_queue >= 1, got {self.max_queue}")
        if self.batch_records < 1:
            raise ConfigError(f"expected batch_records >= 1, got {self.batch_records}")
        if self.flush_interval_s <= 0:
            raise ConfigError(f"expected flush_interval_s > 0, got {self.flush_interval_s}")


@dataclass
class RecorderStats:
    offered: int = 0  # feature-carrying or not, every request handed to offer()
    recorded: int = 0  # records durably written and indexed
    dropped_queue_full: int = 0
    dropped_write_failed: int = 0
    unparsable: int = 0  # bytes that were not a valid InferRequest
    invalid: int = 0  # valid InferRequests with a header the cloud refuses (non-finite scale/offset)
    shards: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CaptureRecorder:
    """Owns the writer thread; ``offer`` is safe to call from any thread or event loop."""

    def __init__(self, writer: CaptureWriter, config: RecorderConfig | None = None) -> None:
        self.config = config or RecorderConfig()
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.max_queue)
        self._stats = RecorderStats()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def offer(self, method: str, payload: bytes) -> bool:
        """Queue a copy of one request for recording; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((time.time(), method, payload))
        except queue.Full:
            with self._lock:
                self._stats.offered += 1
                self._stats.dropped_queue_full += 1
                dropped = self._stats.dropped_queue_full
            if dropped == 1 or dropped % 1000 == 0:
                logger.warning("capture queue full: %d capture(s) dropped so far (traffic unaffected)", dropped)
            return False
        with self._lock:
            self._stats.offered += 1
        return True

    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(**asdict(self._stats))

    def close(self, timeout_s: float = 30.0) -> RecorderStats:
        """Write everything still queued, stop the thread, close the store."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    logger.warning("capture queue did not drain within %.0f s; pending captures are lost", timeout_s)
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._writer.close()
        stats = self.stats()
        logger.info("capture recorder closed: %s", stats.to_dict())
        return stats

    def _run(self) -> None:
        pending: list[CaptureRecord] = []
        oldest = 0.0
        while True:
            interval = self.config.flush_interval_s
            timeout = interval if not pending else max(0.0, oldest + interval - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush(pending)
                return
            if item is not None:
                record = self._parse(*item)
                if record is not None:
                    if not pending:
                        oldest = time.monotonic()
                    pending.append(record)
            due = pending and time.monotonic() - oldest >= self.config.flush_interval_s
            if len(pending) >= self.config.batch_records or due:
                self._flush(pending)
                pending = []

    def _parse(self, captured_at: float, method: str, payload: bytes) -> CaptureRecord | None:
        try:
            return parse_capture(method, payload, captured_at)
        except DecodeError:
            with self._lock:
                self._stats.unparsable += 1
            logger.info("not recording an unparsable %s request (%d bytes)", method, len(payload))
            return None
        except InvalidCaptureError as exc:
            with self._lock:
                self._stats.invalid += 1
            logger.info("not recording a %s request the cloud refuses: %s", method, exc)
            return None

    def _flush(self, records: list[CaptureRecord]) -> None:
        if not records:
            return
        try:
            name = self._writer.append(records)
        except (OSError, sqlite3.Error) as exc:
            with self._lock:
                self._stats.dropped_write_failed += len(records)
                total = self._stats.dropped_write_failed
            logger.warning("dropped %d capture(s) (%d so far): could not write the store: %s", len(records), total, exc)
            return
        with self._lock:
            self._stats.recorded += len(records)
            self._stats.shards += 1
        logger.debug("wrote shard %s with %d capture(s)", name, len(records))
