"""Dynamic micro-batching: concurrent requests share one decoder call, run on one decoder thread.

gRPC handler threads ``reserve`` a slot as soon as a request arrives, decode
it, then ``run`` its features: the request is queued and its handler thread
waits. One decoder thread runs the decoder on as many queued samples as fit in
``max_batch``; it waits up to ``max_delay`` for more only while some reserved
request is still being decoded, so a lone client never pays the delay and a
crowd gets batched. While the decoder runs, new requests queue up and form the
next call.

Why one thread, not the requests' own. Running the decoder on whichever handler
thread arrived first saved the hand-off (0.1-0.2 ms per request on a busy
machine), but every thread that runs the decoder keeps a glibc malloc arena as
large as the decoder's activations: on the digits model at batch 64, each new
thread added about 20 MB of RSS for good (`MALLOC_ARENA_MAX=2`: still 8-10 MB),
so a server with 16 handler threads grew by up to 320 MB as load moved the
decoder from thread to thread, and the fuzz campaign's memory check failed under
load. Memory that stays flat is worth more than 0.15 ms.

Each result carries the size of the micro-batch it was computed in, which the
service reports as ``served_batch_size``, and when that call began and ended
(``cloud_server.stages``). An ``observer`` (the Prometheus metrics) is told of
each successful call with those same timestamps, before its requests are woken,
so a request is counted by the time its caller has the answer; the server sets
it after the warm-up, whose calls are not served batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from cloud_server.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    logits: torch.Tensor  # (B, num_classes) float32, this request's rows only
    served_batch_size: int
    started_ns: int  # time.perf_counter_ns() when the decoder call began (stage timing)
    finished_ns: int  # ... and when it returned


class BatchObserver(Protocol):
    def observe_batch(self, size: int, started_ns: int, finished_ns: int, enqueued_ns: Sequence[int]) -> None:
        """A decoder call of ``size`` samples ran; ``enqueued_ns``: when each of its requests was queued."""


class _Item:
    __slots__ = ("done", "enqueued_ns", "error", "features", "result", "size")

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features  # (B, C, H, W)
        self.size = int(features.shape[0])
        self.enqueued_ns = time.perf_counter_ns()  # the start of its queue wait (as the ``queue`` stage counts it)
        self.result: BatchResult | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class Reservation:
    """A request on its way into the batcher; use as a context manager and call ``run`` once."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = True

    def run(self, features: torch.Tensor) -> BatchResult:
        self._open = False
        return self._batcher._run(features, reserved=True)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:
            self._open = False
            self._batcher._release()


class MicroBatcher:
    """Groups queued feature batches into decoder calls of at most ``max_batch`` samples."""

    def __init__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
    ) -> None:
        self._predict = predict
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._queued_samples = 0
        self._incoming = 0
        self._closed = False
        self.observer: BatchObserver | None = None
        self._thread = threading.Thread(target=self._work, name="decoder", daemon=True)
        self._thread.start()

    def reserve(self) -> Reservation:
        with self._cond:
            self._incoming += 1
        return Reservation(self)

    def run(self, features: torch.Tensor) -> BatchResult:
        """Decode (B, C, H, W) features, 1 <= B <= max_batch, within a micro-batch; blocks until done."""
        return self._run(features, reserved=False)

    def close(self) -> None:
        """Refuse new work; return once everything queued has been decoded."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _release(self) -> None:
        with self._cond:
            self._incoming -= 1
            self._cond.notify_all()

    def _run(self, features: torch.Tensor, *, reserved: bool) -> BatchResult:
        item = _Item(features)
        with self._cond:
            if reserved:
                self._incoming -= 1
            if self._closed:
                raise ServiceUnavailableError("the server is shutting down; retry on another instance")
            if self._queued_samples + item.size > self._max_queue:
                raise ServiceUnavailableError(
                    f"the server is overloaded ({self._queued_samples} samples queued, limit {self._max_queue});"
                    " retry later"
                )
            self._queue.append(item)
            self._queued_samples += item.size
            self._cond.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _work(self) -> None:
        """The decoder thread: one call after another until closed and drained."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._take_batch()
                self._cond.release()
                try:
                    self._execute(batch)
                finally:
                    self._cond.acquire()

    def _take_batch(self) -> list[_Item]:
        """Called with the lock held and the queue non-empty: the oldest requests that fit in one call."""
        batch = [self._queue.popleft()]
        size = batch[0].size
        deadline = time.monotonic() + self._max_delay_s
        while size < self._max_batch:
            if self._queue:
                if size + self._queue[0].size > self._max_batch:
                    break
                batch.append(self._queue.popleft())
                size += batch[-1].size
                continue
            remaining = deadline - time.monotonic()
            if self._incoming == 0 or remaining <= 0:
                break
            self._cond.wait(remaining)
        self._queued_samples -= size
        return batch

    def _execute(self, batch: list[_Item]) -> None:
        """Decode ``batch`` in one call and wake its requests."""
        size = sum(item.size for item in batch)
        started = time.perf_counter_ns()
        try:
            features = batch[0].features if len(batch) == 1 else torch.cat([i.features for i in batch])
            logits = self._predict(features)  # (size, num_classes)
        except BaseException as exc:  # noqa: BLE001 - handed to every request of the call, mapped to a status there
            for item in batch:
                item.error = exc
                item.done.set()
            return
        finished = time.perf_counter_ns()
        observer = self.observer
        if observer is not None:
            try:
                observer.observe_batch(size, started, finished, [item.enqueued_ns for item in batch])
            except Exception:  # metrics must never stop the decoder thread: every request would hang
                logger.exception("the batch observer failed; serving goes on")
        start = 0
        for item in batch:
            item.result = BatchResult(logits[start : start + item.size], size, started, finished)
            item.done.set()
            start += item.size
