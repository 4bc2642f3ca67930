"""Accuracy, throughput, latency and wire bytes of split inference over a real connection.

Latency is the round trip of one request once its features are ready
(serialise, send, cloud decode incl. micro-batching, answer); throughput is
images over the wall time of the whole run, edge encoding included.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import repeat

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, Subset
from tqdm import tqdm

from cem.data.sample_ids import format_sample_id
from edge_client.client import EdgeClient, Prediction
from edge_client.transport import RemoteCallError


class EvaluationStoppedError(RemoteCallError):
    """A call failed for good in the middle of an evaluation; the message says how many images had been answered,
    so a user comparing with a tap's capture count knows which requests never reached the cloud's answer."""

    def __init__(self, cause: RemoteCallError, answered: int, total: int) -> None:
        super().__init__(cause.method, cause.code, cause.details, cause.attempts)
        self.answered = answered
        self.total = total
        self.args = (f"the evaluation stopped after {answered} of {total} images were answered: {cause}",)


@dataclass(frozen=True)
class EvalReport:
    model_id: str
    dataset: str
    split: str
    wire_dtype: str
    batch_size: int
    stream: bool
    images: int
    correct: int
    accuracy: float
    seconds: float
    throughput_ips: float
    latency_ms_p50: float
    latency_ms_p99: float
    bytes_per_image: float
    mean_served_batch_size: float

    def to_dict(self) -> dict:
        return asdict(self)


class _InOrderBatches:
    """One pass over a data set in fixed batches, and the labels of the batches still awaiting an answer.

    The cloud answers in request order (one unary call at a time; ``InferStream`` by its
    contract), so the next answer always belongs to the oldest batch sent and not yet
    answered: ``images`` queues each batch's labels as it reads the batch, ``answered``
    takes the oldest. Sample ids depend only on a batch's positions, so ``sample_ids``
    walks the same batch sampler by itself and shares no state with ``images``.
    """

    def __init__(self, dataset: Dataset, batch_size: int) -> None:
        self._sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)  # type: ignore[arg-type]
        self._loader = DataLoader(dataset, batch_sampler=self._sampler)
        self._waiting: deque[torch.Tensor] = deque()  # labels (B,) of batches sent, oldest first

    def images(self) -> Iterator[torch.Tensor]:
        """Each batch's images (B, C, S, S) in [0, 1], in order; reads the data once."""
        for x, y in self._loader:
            self._waiting.append(y)
            yield x

    def sample_ids(self, dataset_name: str, split: str) -> Iterator[list[str]]:
        """Each batch's sample ids (``cem.data.sample_ids``), in the order of ``images``."""
        for indices in self._sampler:
            yield [format_sample_id(dataset_name, split, i) for i in indices]

    def answered(self) -> torch.Tensor:
        """The labels (B,) of the oldest batch not yet answered; call once per answer, in order."""
        return self._waiting.popleft()


def evaluate_over_wire(
    client: EdgeClient,
    dataset: Dataset,
    *,
    dataset_name: str,
    split: str,
    batch_size: int = 32,
    limit: int | None = None,
    stream: bool = False,
    send_sample_ids: bool = False,
    show_progress: bool = True,
) -> EvalReport:
    """Classify ``dataset`` (items: (image (C, S, S) in [0, 1], label)) through the cloud, in order."""
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))  # type: ignore[arg-type]
    batches = _InOrderBatches(dataset, batch_size)
    sample_ids = batches.sample_ids(dataset_name, split) if send_sample_ids else None
    started = time.perf_counter()
    predictions: Iterable[Prediction]
    if stream:
        predictions = client.classify_stream(batches.images(), sample_ids=sample_ids)
    else:
        ids_per_batch: Iterable[list[str] | None] = sample_ids if sample_ids is not None else repeat(None)
        # Not strict: without sample ids the second iterable never ends.
        predictions = (
            client.classify(x, sample_ids=ids) for x, ids in zip(batches.images(), ids_per_batch, strict=False)
        )
    correct = total = wire_bytes = served = 0
    latencies: list[float] = []
    with tqdm(total=len(dataset), unit="img", desc="eval", disable=not show_progress) as bar:  # type: ignore[arg-type]
        try:
            for prediction in predictions:
                y = batches.answered()
                correct += int((torch.tensor(prediction.predictions) == y).sum())
                total += int(y.shape[0])
                wire_bytes += prediction.request_bytes
                served += prediction.served_batch_size
                latencies.append(prediction.latency_s)
                bar.update(int(y.shape[0]))
        except RemoteCallError as exc:
            raise EvaluationStoppedError(exc, total, len(dataset)) from exc  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    lat_ms = np.array(latencies) * 1000.0
    return EvalReport(
        model_id=client.manifest.model_id,
        dataset=dataset_name,
        split=split,
        wire_dtype=client.settings.wire_dtype,
        batch_size=batch_size,
        stream=stream,
        images=total,
        correct=correct,
        accuracy=correct / total if total else 0.0,
        seconds=seconds,
        throughput_ips=total / seconds if seconds > 0 else 0.0,
        latency_ms_p50=float(np.percentile(lat_ms, 50)) if total else 0.0,
        latency_ms_p99=float(np.percentile(lat_ms, 99)) if total else 0.0,
        bytes_per_image=wire_bytes / total if total else 0.0,
        mean_served_batch_size=served / len(latencies) if latencies else 0.0,
    )
