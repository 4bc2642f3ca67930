"""Dynamic micro-batching: concurrent requests share one decoder call.

gRPC handler threads ``reserve`` a slot as soon as a request arrives, decode it,
then ``submit`` its features; one worker thread runs the decoder on as many
queued samples as fit in ``max_batch``. The worker waits up to ``max_delay``
for more only while some reserved request is still being decoded: a lone
client never pays the delay, a crowd gets batched. While the decoder runs, new
requests queue up and form the next batch.

Each result carries the size of the micro-batch it was computed in, which the
service reports as ``served_batch_size``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from cloud_server.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    logits: torch.Tensor  # (B, num_classes) float32, this request's rows only
    served_batch_size: int


@dataclass
class _Item:
    features: torch.Tensor  # (B, C, H, W)
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return int(self.features.shape[0])


class Reservation:
    """A request on its way into the batcher; use as a context manager and call ``submit`` once."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = True

    def submit(self, features: torch.Tensor) -> Future[BatchResult]:
        self._open = False
        return self._batcher._enqueue(features, reserved=True)

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
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def reserve(self) -> Reservation:
        with self._cond:
            self._incoming += 1
        return Reservation(self)

    def submit(self, features: torch.Tensor) -> Future[BatchResult]:
        """Queue (B, C, H, W) features with 1 <= B <= max_batch; the future resolves to this request's logits."""
        return self._enqueue(features, reserved=False)

    def close(self) -> None:
        """Refuse new work, finish everything queued, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _release(self) -> None:
        with self._cond:
            self._incoming -= 1
            self._cond.notify_all()

    def _enqueue(self, features: torch.Tensor, *, reserved: bool) -> Future[BatchResult]:
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
        return item.future

    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
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

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            self._execute(batch)

    def _execute(self, batch: list[_Item]) -> None:
        size = sum(item.size for item in batch)
        started = time.perf_counter()
        try:
            features = batch[0].features if len(batch) == 1 else torch.cat([i.features for i in batch])
            logits = self._predict(features)  # (size, num_classes)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, mapped to a status there
            for item in batch:
                item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            item.future.set_result(BatchResult(logits[start : start + item.size], size))
            start += item.size
        logger.debug("served a micro-batch of %d samples from %d requests in %.2f ms",
                     size, len(batch), (time.perf_counter() - started) * 1e3)
