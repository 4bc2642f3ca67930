"""Accuracy, throughput, latency and wire bytes of split inference over a real connection.

Latency is the round trip of one request once its features are ready
(serialise, send, cloud decode incl. micro-batching, answer); throughput is
images over the wall time of the whole run, edge encoding included.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from cem.data.sample_ids import format_sample_id
from edge_client.client import EdgeClient, Prediction


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
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    labels: list[torch.Tensor] = []
    pending_ids: deque[list[str] | None] = deque()

    def image_batches() -> Iterator[torch.Tensor]:
        # Single pass over the data; labels and sample ids are queued as each batch is read,
        # so they are ready by the time its answer arrives (answers come back in order).
        index = 0
        for x, y in loader:
            n = int(y.shape[0])
            labels.append(y)
            pending_ids.append([format_sample_id(dataset_name, split, i) for i in range(index, index + n)] if send_sample_ids else None)
            index += n
            yield x

    def sample_id_batches() -> Iterator[list[str] | None]:
        while pending_ids:
            yield pending_ids.popleft()

    started = time.perf_counter()
    if stream:
        predictions: Iterator[Prediction] = client.classify_stream(image_batches(), sample_ids=sample_id_batches())
    else:
        predictions = (client.classify(x, sample_ids=pending_ids.popleft()) for x in image_batches())
    correct = total = wire_bytes = served = 0
    latencies: list[float] = []
    with tqdm(total=len(loader.dataset), unit="img", desc="eval", disable=not show_progress) as bar:  # type: ignore[arg-type]
        for k, prediction in enumerate(predictions):
            y = labels[k]
            correct += int((torch.tensor(prediction.predictions) == y).sum())
            total += int(y.shape[0])
            wire_bytes += prediction.request_bytes
            served += prediction.served_batch_size
            latencies.append(prediction.latency_s)
            bar.update(int(y.shape[0]))
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
