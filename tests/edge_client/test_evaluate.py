"""evaluate_over_wire pairs every answer with the batch it answers and sends each batch's own sample ids.

A recording stand-in for EdgeClient (same ``classify``/``classify_stream`` contract) lets the
stream read ahead of its answers, as a real InferStream does; the real-server path is covered by
test_edge_client.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from types import SimpleNamespace

import grpc
import pytest
import torch
from torch.utils.data import TensorDataset

from edge_client.client import Prediction
from edge_client.evaluate import EvaluationStoppedError, evaluate_over_wire
from edge_client.transport import RemoteCallError


class RecordingClient:
    """Predicts class 1 where an image's first pixel is > 0.5; the stream answers ``readahead`` requests late."""

    def __init__(self, readahead: int = 0) -> None:
        self.readahead = readahead
        self.sent: list[tuple[torch.Tensor, list[str] | None]] = []
        self.manifest = SimpleNamespace(model_id="m")
        self.settings = SimpleNamespace(wire_dtype="float32")

    def classify(self, images: torch.Tensor, *, sample_ids: Sequence[str] | None = None) -> Prediction:
        self.sent.append((images, list(sample_ids) if sample_ids is not None else None))
        predictions = (images.flatten(1)[:, 0] > 0.5).long().tolist()
        return Prediction(request_id=str(len(self.sent)), logits=torch.zeros(len(predictions), 2),
                          predictions=predictions, served_batch_size=len(predictions),
                          request_bytes=100 * len(predictions), latency_s=0.001)

    def classify_stream(
        self, batches: Iterable[torch.Tensor], *, sample_ids: Iterable[Sequence[str] | None] | None = None
    ) -> Iterator[Prediction]:
        ids = iter(sample_ids) if sample_ids is not None else None
        waiting: list[Prediction] = []
        for images in batches:
            waiting.append(self.classify(images, sample_ids=next(ids) if ids is not None else None))
            if len(waiting) > self.readahead:
                yield waiting.pop(0)
        yield from waiting


@pytest.fixture
def labelled() -> TensorDataset:
    images = torch.rand(23, 1, 2, 2)
    return TensorDataset(images, (images.flatten(1)[:, 0] > 0.5).long())  # the stand-in's predictions are all right


@pytest.mark.parametrize(("stream", "readahead"), [(False, 0), (True, 0), (True, 3)],
                         ids=["unary", "stream", "readahead"])
def test_answers_pair_with_their_batches_and_ids_with_their_positions(
    labelled: TensorDataset, stream: bool, readahead: int
) -> None:
    client = RecordingClient(readahead)
    report = evaluate_over_wire(client, labelled, dataset_name="digits", split="test", batch_size=5, limit=21,  # type: ignore[arg-type]
                                stream=stream, send_sample_ids=True, show_progress=False)
    assert (report.images, report.correct, report.accuracy) == (21, 21, 1.0)
    assert report.bytes_per_image == 100 and report.mean_served_batch_size == 21 / 5
    assert [len(images) for images, _ in client.sent] == [5, 5, 5, 5, 1]
    for k, (images, ids) in enumerate(client.sent):
        positions = range(5 * k, 5 * k + len(images))
        assert torch.equal(images, labelled.tensors[0][positions.start:positions.stop])
        assert ids == [f"digits/test/{i}" for i in positions]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_without_sample_ids_requests_carry_none(labelled: TensorDataset, stream: bool) -> None:
    client = RecordingClient()
    report = evaluate_over_wire(client, labelled, dataset_name="digits", split="test", batch_size=8,  # type: ignore[arg-type]
                                stream=stream, show_progress=False)
    assert report.images == 23 and [ids for _, ids in client.sent] == [None, None, None]


class FailingClient(RecordingClient):
    """Answers ``answers`` calls, then fails every call as a cloud that went away (after its retries) does."""

    def __init__(self, answers: int) -> None:
        super().__init__()
        self.answers = answers

    def classify(self, images: torch.Tensor, *, sample_ids: Sequence[str] | None = None) -> Prediction:
        if len(self.sent) == self.answers:
            raise RemoteCallError("Infer", grpc.StatusCode.UNAVAILABLE, "connection refused", attempts=10)
        return super().classify(images, sample_ids=sample_ids)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_call_failing_mid_run_says_how_many_images_were_answered(labelled: TensorDataset, stream: bool) -> None:
    with pytest.raises(EvaluationStoppedError) as info:
        evaluate_over_wire(FailingClient(answers=2), labelled, dataset_name="digits", split="test",  # type: ignore[arg-type]
                           batch_size=5, stream=stream, show_progress=False)
    assert (info.value.answered, info.value.total) == (10, 23)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 10
    assert str(info.value) == ("the evaluation stopped after 10 of 23 images were answered: "
                               "Infer failed with UNAVAILABLE after 10 attempts: connection refused")
