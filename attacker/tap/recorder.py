"""Recording off the forwarding path: a bounded queue drained by one writer thread.

The proxy calls :meth:`CaptureRecorder.offer` with the raw bytes of a request
the upstream has answered OK (and of its answer); that is a non-blocking
``put_nowait`` and nothing more. Parsing, de-duplication, batching and disk I/O
happen on the writer thread. When the disk is slow the queue fills and new
captures are dropped; when it fails the batch in hand is dropped; when the
capture directory cannot be opened at all the writer retries it every
``reopen_interval_s``. Every drop is counted and logged.

What happens to *traffic* meanwhile is the operator's choice
(``on_store_failure``): ``forward`` (the default) keeps inference flowing and
reports ``capturing = False`` in health and metrics; ``refuse`` makes the tap
refuse to start on an unusable directory and answer new captured calls
UNAVAILABLE while it cannot record them, for deployments where an unaudited
request is worse than a failed one.

Bound on loss at ``kill -9``: captures still in the queue or in the batch being
assembled, i.e. at most ``max_queue + batch_records`` answered requests, and in
steady state only those answered in the last ``flush_interval_s`` plus one
shard write. A graceful stop (SIGTERM) writes them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from cem.captures.records import CaptureRecord, parse_capture
from cem.captures.store import CaptureWriter
from cem.durable import write_durably
from cem.errors import CaptureStoreError, ConfigError, InvalidCaptureError

logger = logging.getLogger(__name__)

_STOP = object()
STORE_FAILURE_MODES = ("forward", "refuse")  # what traffic does while captures cannot be written
PROBE_FILE = "probe"  # written and removed to prove a failed store writable again (no shard suffix: never indexed)


@dataclass(frozen=True)
class RecorderConfig:
    max_queue: int = 4096  # requests waiting for the disk before new ones are dropped
    batch_records: int = 64  # records per shard at most
    flush_interval_s: float = 0.25  # a partial batch is written after this long
    on_store_failure: str = "forward"  # one of STORE_FAILURE_MODES
    reopen_interval_s: float = 5.0  # how often an unusable capture directory is tried again
    dedup_window: int = 65536  # recent (model, request id, payload) keys remembered to drop client retries

    def __post_init__(self) -> None:
        if self.on_store_failure not in STORE_FAILURE_MODES:
            raise ConfigError(f"expected on_store_failure in {STORE_FAILURE_MODES}, got {self.on_store_failure!r}")
        if self.reopen_interval_s <= 0:
            raise ConfigError(f"expected reopen_interval_s > 0, got {self.reopen_interval_s}")
        if self.dedup_window < 0:
            raise ConfigError(f"expected dedup_window >= 0, got {self.dedup_window}")
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
    dropped_write_failed: int = 0  # including captures dropped while the directory could not be opened
    unparsable: int = 0  # bytes that were not a valid InferRequest
    invalid: int = 0  # answered InferRequests with a header no index can hold (non-finite scale/offset)
    rejected_upstream: int = 0  # feature requests the upstream did not answer OK: forwarded, not recorded
    duplicates: int = 0  # byte-identical resends of a recorded request (client retries): not recorded twice
    refused: int = 0  # calls answered UNAVAILABLE because captures could not be written (refuse mode)
    shards: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CaptureRecorder:
    """Owns the writer thread; ``offer`` is safe to call from any thread or event loop.

    Opens the capture directory at construction; when that fails it raises in
    ``refuse`` mode and, in ``forward`` mode, starts without a store and keeps
    trying to open it.
    """

    def __init__(self, captures: str | Path, config: RecorderConfig | None = None) -> None:
        self.config = config or RecorderConfig()
        self._root = Path(captures)
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.max_queue)
        self._stats = RecorderStats()
        self._lock = threading.Lock()
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self._writer: CaptureWriter | None = None
        self._store_ok = False  # the store is open and its last write succeeded
        self._next_open_at = 0.0
        try:
            self._open_store()
        except (OSError, sqlite3.Error, CaptureStoreError) as exc:
            if self.config.on_store_failure == "refuse":
                raise CaptureStoreError(f"cannot open the capture directory {self._root}: {exc}") from exc
            self._next_open_at = time.monotonic() + self.config.reopen_interval_s
            logger.error("cannot open the capture directory %s (%s); forwarding traffic WITHOUT capturing it, "
                         "retrying every %.0f s", self._root, exc, self.config.reopen_interval_s)
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    @property
    def capturing(self) -> bool:
        """Whether captures are currently being written (store open, last write succeeded)."""
        return self._store_ok

    def accepting(self) -> bool:
        """In ``refuse`` mode, whether a new captured call may be forwarded; always True in ``forward`` mode."""
        return self.config.on_store_failure == "forward" or (self._store_ok and not self._queue.full())

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def count_refused(self) -> None:
        with self._lock:
            self._stats.refused += 1

    def count_rejected(self, requests: int = 1) -> None:
        """Feature requests forwarded but not answered OK upstream (the cloud refused them or failed)."""
        with self._lock:
            self._stats.rejected_upstream += requests

    def offer(self, method: str, payload: bytes, response: bytes | None = None) -> bool:
        """Queue one request the upstream answered OK (and its answer) for recording; False when the queue is full."""
        try:
            self._queue.put_nowait((time.time(), method, payload, response))
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
        if self._writer is not None:
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
            if not self._store_ok and time.monotonic() >= self._next_open_at:
                self._probe_store()
            if item is not None:
                record = self._parse(*item)
                if record is not None and not self._is_duplicate(record):
                    if not pending:
                        oldest = time.monotonic()
                    pending.append(record)
            due = pending and time.monotonic() - oldest >= self.config.flush_interval_s
            if len(pending) >= self.config.batch_records or due:
                self._flush(pending)
                pending = []

    def _open_store(self) -> None:
        self._writer = CaptureWriter(self._root)
        self._store_ok = True

    def _probe_store(self) -> None:
        """Try the store again after a failure: open it, or prove it writable with a throw-away file.

        Without the probe a store that failed in ``refuse`` mode would never
        recover, since no capture reaches it while calls are refused.
        """
        try:
            if self._writer is None:
                self._writer = CaptureWriter(self._root)
            else:
                probe = self._writer.shard_dir / PROBE_FILE
                write_durably(probe, b"probe")
                probe.unlink()
        except (OSError, sqlite3.Error, CaptureStoreError) as exc:
            self._next_open_at = time.monotonic() + self.config.reopen_interval_s
            logger.debug("capture directory %s still unusable: %s", self._root, exc)
            return
        self._store_ok = True
        logger.warning("capture directory %s usable again: capturing", self._root)

    def _is_duplicate(self, record: CaptureRecord) -> bool:
        """A byte-identical resend of a recent request (a client retry), which must not be counted twice.

        The key includes a digest of the payload, so reusing a request id for
        *different* features cannot hide them from the auditor.
        """
        if self.config.dedup_window == 0 or not record.request_id:
            return False
        header = {name: value for name, value in record.to_header().items() if name != "captured_at"}
        digest = hashlib.blake2b(json.dumps(header, sort_keys=True).encode(), digest_size=16)
        digest.update(record.data)
        key = digest.digest()
        if key in self._recent:
            with self._lock:
                self._stats.duplicates += 1
            return True
        self._recent[key] = None
        if len(self._recent) > self.config.dedup_window:
            self._recent.popitem(last=False)
        return False

    def _parse(self, captured_at: float, method: str, payload: bytes, response: bytes | None) -> CaptureRecord | None:
        try:
            return parse_capture(method, payload, captured_at, response)
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
        if self._writer is None:
            with self._lock:
                self._stats.dropped_write_failed += len(records)
            return
        try:
            name = self._writer.append(records)
        except (OSError, sqlite3.Error) as exc:
            self._store_ok = False
            self._next_open_at = time.monotonic() + self.config.reopen_interval_s
            with self._lock:
                self._stats.dropped_write_failed += len(records)
                total = self._stats.dropped_write_failed
            logger.warning("dropped %d capture(s) (%d so far): could not write the store: %s", len(records), total, exc)
            return
        self._store_ok = True
        with self._lock:
            self._stats.recorded += len(records)
            self._stats.shards += 1
        logger.debug("wrote shard %s with %d capture(s)", name, len(records))
