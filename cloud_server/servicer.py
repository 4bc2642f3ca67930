"""The ``SplitInference`` servicer: decode request -> micro-batched decoder -> encode response.

Each handler body runs under ``abort_with`` (cloud_server.errors), the one place
errors become status codes. Until the warm-up inference has run, requests are
answered UNAVAILABLE; on shutdown gRPC itself refuses new calls.

The handlers receive the raw request bytes (``add_to_server`` registers them
without a deserializer) and parse them here. When grpcio parses and the bytes are
not a valid message, it answers INTERNAL and keeps ~19 KB per such request for
good (3,000 requests: +57 MB), a leak in the library's failure path that even a
server with only the Health service shows. Parsing ourselves turns an
unparseable request into an ordinary INVALID_ARGUMENT and keeps memory flat.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from cem.codec import WIRE_DTYPES, dtype_to_enum, encode_array
from cem.wire import SERVER_TIMING_KEY, SERVICE_NAME, TIMING_REQUEST_KEY
from cloud_server.batcher import MicroBatcher
from cloud_server.errors import InvalidRequestError, ServiceUnavailableError, abort_with, code_for
from cloud_server.runtime import DecoderRuntime
from cloud_server.settings import ServerSettings
from cloud_server.stages import UNTIMED, StageClock
from cloud_server.validation import RequestLimits, decode_request
from protos import cem_split_pb2 as pb

if TYPE_CHECKING:  # prometheus_client is imported only when metrics are on (``CloudServer``)
    from cloud_server.metrics import CloudMetrics

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
LOGITS_WIRE_DTYPE = "float32"


def parse_message(message_type: type[M], payload: bytes) -> M:
    """``payload`` as ``message_type``; InvalidRequestError (INVALID_ARGUMENT) when it is not one."""
    try:
        return message_type.FromString(payload)
    except DecodeError as exc:
        raise InvalidRequestError(
            f"expected a serialised {message_type.DESCRIPTOR.full_name}, got {len(payload)} unparseable bytes"
        ) from exc


def add_to_server(servicer: SplitInferenceServicer, server: grpc.Server) -> None:
    """Register the service with byte-level handlers (see the module docstring)."""
    handlers = {
        # The inference methods answer serialised bytes: their serialisation is timed (``cloud_server.stages``)
        # and the metrics count the bytes sent without serialising twice.
        "Infer": grpc.unary_unary_rpc_method_handler(servicer.Infer),
        "InferStream": grpc.stream_stream_rpc_method_handler(servicer.InferStream),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo, response_serializer=pb.ModelInfo.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class SplitInferenceServicer:
    def __init__(
        self,
        runtime: DecoderRuntime,
        batcher: MicroBatcher,
        settings: ServerSettings,
        metrics: CloudMetrics | None = None,
    ) -> None:
        self._runtime = runtime
        self._batcher = batcher
        self._settings = settings
        self._metrics = metrics
        self._limits = RequestLimits(
            model_id=runtime.model_id,
            feature_shape=runtime.feature_shape,
            max_batch=settings.max_batch,
            max_bytes=settings.max_message_bytes,
        )
        self._accepting = threading.Event()
        self.last_call_at = 0.0  # time.monotonic() of the latest call; the shutdown drain watches it

    def start_accepting(self) -> None:
        """Open the service once the warm-up inference has run."""
        self._accepting.set()

    def Infer(self, payload: bytes, context: grpc.ServicerContext) -> bytes:
        """The serialised answer, so that its serialisation is timed with the rest (``cloud_server.stages``)."""
        self.last_call_at = time.monotonic()
        call = self._metrics.start_call("Infer", len(payload)) if self._metrics is not None else None
        clock = StageClock(enabled=any(key == TIMING_REQUEST_KEY for key, _ in context.invocation_metadata()))
        try:
            request = parse_message(pb.InferRequest, payload)
            if call is not None:
                call.parsed(request)
            clock.mark("parse")
            answer = self._infer_one(request, clock).SerializeToString()
            clock.mark("respond")
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes a status (unmapped: INTERNAL)
            if call is not None:
                call.finish(code_for(exc))
            abort_with(context, exc)
        if call is not None:
            call.finish(grpc.StatusCode.OK, len(answer), LOGITS_WIRE_DTYPE)
        if clock.enabled:
            context.set_trailing_metadata(((SERVER_TIMING_KEY, clock.header()),))
        return answer

    def InferStream(self, payloads: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """One serialised response per request, in order; a bad request ends the stream with its status."""
        self.last_call_at = time.monotonic()
        call = None  # the message being handled, for the metrics
        try:
            for payload in payloads:
                call = self._metrics.start_call("InferStream", len(payload)) if self._metrics is not None else None
                request = parse_message(pb.InferRequest, payload)
                if call is not None:
                    call.parsed(request)
                answer = self._infer_one(request, UNTIMED).SerializeToString()
                if call is not None:
                    call.finish(grpc.StatusCode.OK, len(answer), LOGITS_WIRE_DTYPE)
                    call = None
                yield answer
        except Exception as exc:  # noqa: BLE001 - as in Infer: every error becomes a status
            if call is not None:
                call.finish(code_for(exc))
            if context.is_active():  # a stream the client cancelled needs no status
                abort_with(context, exc)

    def GetModelInfo(self, payload: bytes, context: grpc.ServicerContext) -> pb.ModelInfo:
        self.last_call_at = time.monotonic()
        call = self._metrics.start_call("GetModelInfo") if self._metrics is not None else None
        try:
            parse_message(pb.ModelInfoRequest, payload)
            info = self._model_info()
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes a status (unmapped: INTERNAL)
            if call is not None:
                call.finish(code_for(exc))
            abort_with(context, exc)
        if call is not None:
            call.finish(grpc.StatusCode.OK)
        return info

    def _model_info(self) -> pb.ModelInfo:
        manifest = self._runtime.manifest
        return pb.ModelInfo(
            model_id=manifest.model_id,
            arch=manifest.model.arch,
            cut_layer=manifest.model.cut_layer,
            feature_shape=list(manifest.feature_shape),
            accepted_dtypes=[dtype_to_enum(name) for name in WIRE_DTYPES],
            noise_std=manifest.noise_std,
            class_names=manifest.class_names,
            dataset=manifest.dataset.name,
            max_batch=self._settings.max_batch,
            max_message_bytes=self._settings.max_message_bytes,
        )

    def _infer_one(self, request: pb.InferRequest, clock: StageClock) -> pb.InferResponse:
        if not self._accepting.is_set():
            raise ServiceUnavailableError("the server is warming up; retry shortly")
        with self._batcher.reserve() as reservation:
            features = decode_request(request, self._limits)  # (B, C, H, W)
            clock.mark("validate")
            result = reservation.run(features)
        clock.mark("queue", result.started_ns)
        clock.mark("decoder", result.finished_ns)
        clock.mark("resume")
        logits = result.logits.numpy()  # (B, num_classes) float32 on the CPU; numpy skips torch's dispatch
        return pb.InferResponse(
            model_id=self._runtime.model_id,
            request_id=request.request_id or uuid.uuid4().hex,
            logits=encode_array(logits, LOGITS_WIRE_DTYPE),
            predictions=logits.argmax(axis=1).tolist(),
            served_batch_size=result.served_batch_size,
        )
