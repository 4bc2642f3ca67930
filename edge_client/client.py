"""``EdgeClient``: private images in, predictions out; only noisy features leave the device.

    with EdgeClient("bundles/digits", "127.0.0.1:50051") as client:
        prediction = client.classify(["seven.png"])          # unary, deadline + retry
        for p in client.classify_stream(batches): ...        # one bidirectional stream

Every call carries the bundle's model id (the cloud refuses another model with
NOT_FOUND), a request id, and a deadline. Sample ids travel only when the
caller passes them (demo and audit runs).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import torch
from google.protobuf.message import Message

from cem.codec import decode_tensor, encode_tensor
from cem.errors import CEMError
from cem.manifest import Manifest
from edge_client.preprocess import ImageInput, prepare_images
from edge_client.runtime import EncoderRuntime
from edge_client.settings import ClientSettings
from edge_client.transport import call_with_retry, check_target, create_channel, to_remote_error
from protos import cem_split_pb2 as pb
from protos import cem_split_pb2_grpc as pb_grpc

ImageBatch = ImageInput | Sequence[ImageInput]
T = TypeVar("T")


class ModelMismatchError(CEMError):
    """The server serves a different model than the edge's bundle."""


@dataclass(frozen=True)
class Prediction:
    """One answered request. logits: (B, num_classes) float32."""

    request_id: str
    logits: torch.Tensor
    predictions: list[int]
    served_batch_size: int
    request_bytes: int
    latency_s: float

    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=1)

    def top_k(self, k: int, class_names: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Per sample, the ``k`` most probable (label, probability) pairs, most probable first."""
        probs, indices = self.probabilities().topk(min(k, self.logits.shape[1]), dim=1)
        return [
            [(class_names[i], p) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)]
            for row_i, row_p in zip(indices, probs, strict=True)
        ]


class EdgeClient:
    def __init__(self, bundle_dir: str | Path, target: str, settings: ClientSettings | None = None) -> None:
        self.settings = settings or ClientSettings()
        self.target = target
        check_target(target, self.settings)  # a malformed target fails before the encoder is loaded
        self._encoder = EncoderRuntime(bundle_dir, self.settings.device, self.settings.seed)
        self._channel = create_channel(target, self.settings)
        self._stub = pb_grpc.SplitInferenceStub(self._channel)

    @property
    def manifest(self) -> Manifest:
        return self._encoder.manifest

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, images: ImageBatch) -> torch.Tensor:
        """-> (B, C, S, S) float in [0, 1] at the bundle's channels and size."""
        config = self.manifest.model
        return prepare_images(images, channels=config.in_channels, size=config.image_size)

    def encode(self, images: ImageBatch) -> torch.Tensor:
        """-> (B, *feature_shape) float32: encoder output after the bundle's noise and defenses."""
        return self._encoder.encode(self.prepare(images))

    def build_request(self, features: torch.Tensor, *, sample_ids: Sequence[str] | None = None) -> pb.InferRequest:
        return pb.InferRequest(
            model_id=self.manifest.model_id,
            request_id=uuid.uuid4().hex,
            features=encode_tensor(features, self.settings.wire_dtype),
            sample_ids=list(sample_ids or []),
        )

    def _call(self, method: str, rpc: Callable[..., T], request: Message) -> T:
        """One unary call with the settings' deadline, retry policy and budget (see ``call_with_retry``)."""
        return call_with_retry(
            method,
            lambda deadline_s: rpc(request, timeout=deadline_s),
            self.settings.retry,
            timeout_s=self.settings.timeout_s,
        )

    def model_info(self) -> pb.ModelInfo:
        return self._call("GetModelInfo", self._stub.GetModelInfo, pb.ModelInfoRequest())

    def check_server(self) -> pb.ModelInfo:
        """The server's model info, after checking it serves this bundle's model."""
        info = self.model_info()
        if info.model_id != self.manifest.model_id:
            raise ModelMismatchError(
                f"expected the server to serve model {self.manifest.model_id}, got {info.model_id}"
            )
        return info

    def infer_features(self, features: torch.Tensor, *, sample_ids: Sequence[str] | None = None) -> Prediction:
        """Send already encoded features (B, C, H, W) in one unary call."""
        request = self.build_request(features, sample_ids=sample_ids)
        start = time.perf_counter()
        response = self._call("Infer", self._stub.Infer, request)
        return _to_prediction(response, request, time.perf_counter() - start)

    def classify(self, images: ImageBatch, *, sample_ids: Sequence[str] | None = None) -> Prediction:
        return self.infer_features(self.encode(images), sample_ids=sample_ids)

    def classify_stream(
        self, batches: Iterable[ImageBatch], *, sample_ids: Iterable[Sequence[str] | None] | None = None
    ) -> Iterator[Prediction]:
        """One prediction per batch, in order, over one InferStream call (deadline ``stream_timeout_s``).

        Streams are not retried: requests already consumed cannot be replayed safely.
        """
        sent: dict[str, tuple[pb.InferRequest, float]] = {}
        failures: list[Exception] = []
        ids_iter = iter(sample_ids) if sample_ids is not None else None

        def requests() -> Iterator[pb.InferRequest]:
            # Runs on a gRPC thread: an error here (a bad image) ends the request
            # stream cleanly and is re-raised to the caller once the answers drain.
            try:
                for batch in batches:
                    ids = next(ids_iter) if ids_iter is not None else None
                    request = self.build_request(self.encode(batch), sample_ids=ids)
                    sent[request.request_id] = (request, time.perf_counter())
                    yield request
            except Exception as exc:  # noqa: BLE001 - re-raised to the caller once the answers drain
                failures.append(exc)

        call = self._stub.InferStream(requests(), timeout=self.settings.stream_timeout_s)
        try:
            for response in call:
                request, started = sent.pop(response.request_id)
                yield _to_prediction(response, request, time.perf_counter() - started)
        except grpc.RpcError as exc:
            raise to_remote_error("InferStream", exc) from None
        finally:
            call.cancel()
        if failures:
            raise failures[0]


def _to_prediction(response: pb.InferResponse, request: pb.InferRequest, latency_s: float) -> Prediction:
    logits = decode_tensor(response.logits)  # (B, num_classes)
    return Prediction(
        request_id=response.request_id,
        logits=logits,
        predictions=list(response.predictions),
        served_batch_size=response.served_batch_size,
        request_bytes=request.ByteSize(),
        latency_s=latency_s,
    )
