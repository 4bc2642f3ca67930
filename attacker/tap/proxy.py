"""A transparent gRPC proxy that copies feature tensors to the recorder on the way through.

Every method is forwarded as opaque bytes (no serializers on either side, so
nothing is parsed or re-encoded on the forwarding path): request metadata, the
caller's deadline, response metadata, trailing metadata, status codes and
details all pass through, and a client cancellation cancels the upstream call.
The edge cannot tell the tap is there.

Methods known to be unary (from the SplitInference and health descriptors)
take the cheaper unary path; every other method, known or not, is proxied as a
bidirectional stream, which is wire-compatible with all four call shapes.
Built on grpc.aio so that any number of long-lived streams share one event loop
instead of each holding a thread.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Sequence

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from attacker.tap.records import CAPTURED_METHODS
from attacker.tap.recorder import CaptureRecorder
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES, grpc_message_options
from protos import cem_split_pb2 as pb

logger = logging.getLogger(__name__)

_NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as a huge time_remaining()
# Headers the transport sets itself on the upstream call; forwarding them would duplicate or clash.
_TRANSPORT_HEADERS = ("user-agent", "te", "content-type", "grpc-", ":")
Metadata = Sequence[tuple[str, str | bytes]]


def _unary_methods() -> frozenset[str]:
    methods = set()
    for service in (pb.DESCRIPTOR.services_by_name["SplitInference"], health_pb2.DESCRIPTOR.services_by_name["Health"]):
        for method in service.methods:
            if not method.client_streaming and not method.server_streaming:
                methods.add(f"/{service.full_name}/{method.name}")
    return frozenset(methods)


UNARY_METHODS = _unary_methods()


def forwardable_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    """The caller's metadata minus what the upstream transport sets itself."""
    return tuple(
        (key, value) for key, value in (context.invocation_metadata() or ()) if not key.startswith(_TRANSPORT_HEADERS)
    )


def remaining_timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline, as a timeout for the upstream call (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_S else max(0.0, remaining)


async def relay_failure(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, sent_metadata: bool) -> None:
    """End the caller's RPC with exactly the upstream status, details and metadata."""
    if not sent_metadata and error.initial_metadata():
        await context.send_initial_metadata(tuple(error.initial_metadata()))
    await context.abort(error.code(), error.details() or "", trailing_metadata=tuple(error.trailing_metadata() or ()))


class TapProxy(grpc.GenericRpcHandler):
    """Generic handler: resolves any method name to a forwarding behaviour (cached per method)."""

    def __init__(self, channel: grpc.aio.Channel, recorder: CaptureRecorder | None) -> None:
        self._channel = channel
        self._recorder = recorder
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            if method in UNARY_METHODS:
                handler = grpc.unary_unary_rpc_method_handler(self._unary_behaviour(method))
            else:
                handler = grpc.stream_stream_rpc_method_handler(self._stream_behaviour(method))
            self._handlers[method] = handler
        return handler

    def _record(self, method: str, payload: bytes) -> None:
        if self._recorder is not None and method in CAPTURED_METHODS:
            self._recorder.offer(method, payload)

    def _unary_behaviour(self, method: str):
        upstream = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self._record(method, request)
            call = upstream(request, timeout=remaining_timeout(context), metadata=forwardable_metadata(context))
            try:
                response = await call
            except grpc.aio.AioRpcError as error:
                await relay_failure(context, error, sent_metadata=False)
            finally:
                if not call.done():  # the caller went away: so does the upstream call
                    call.cancel()
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(tuple(initial))
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            return response

        return forward

    def _stream_behaviour(self, method: str):
        upstream = self._channel.stream_stream(method)

        async def forward(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext):
            async def requests() -> AsyncIterator[bytes]:
                async for request in request_iterator:
                    self._record(method, request)
                    yield request

            call = upstream(requests(), timeout=remaining_timeout(context), metadata=forwardable_metadata(context))
            sent_metadata = False
            try:
                initial = await call.initial_metadata()
                if initial:
                    await context.send_initial_metadata(tuple(initial))
                    sent_metadata = True
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as error:
                await relay_failure(context, error, sent_metadata)
            finally:
                if not call.done():
                    call.cancel()
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))

        return forward


class TapServer:
    """The proxy bound to ``listen`` and forwarding to ``upstream``; start/stop inside an event loop."""

    def __init__(self, listen: str, upstream: str, recorder: CaptureRecorder | None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.listen = listen
        self.upstream = upstream
        self.recorder = recorder
        # The cloud's limit, enforced before a byte is buffered or recorded: without it a 200 MiB
        # request raised the tap's RSS from 61 MB to 1.17 GB and wrote a 200 MB shard that the
        # cloud then refused.
        self.max_message_bytes = max_message_bytes
        self.port: int | None = None
        self._channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        limits = grpc_message_options(self.max_message_bytes)
        self._channel = grpc.aio.insecure_channel(self.upstream, options=limits)
        self._server = grpc.aio.server(options=[*limits, ("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers((TapProxy(self._channel, self.recorder),))
        try:
            self.port = self._server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            raise OSError(f"could not bind the tap to {self.listen}: {exc}") from exc
        await self._server.start()
        logger.info("tap listening on port %d, forwarding to %s", self.port, self.upstream)
        return self.port

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting calls, let in-flight ones finish for ``grace_s``, then close the upstream channel."""
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._channel is not None:
            await self._channel.close()
        logger.info("tap stopped")
