"""A transparent gRPC proxy that copies answered feature requests to the recorder on the way through.

Every method is forwarded as opaque bytes (no serializers on either side, so
nothing is parsed or re-encoded on the forwarding path): request metadata, the
caller's deadline, response metadata, trailing metadata, status codes and
details all pass through (attacker.tap.relay), and a client cancellation
cancels the upstream call. The edge cannot tell the tap is there.

A feature request is recorded once the upstream has answered it OK, together
with that answer: requests the cloud refused (malformed, oversized, wrong
model) are forwarded but not stored, only counted. On ``InferStream`` the
answers come one per request, in order (the SplitInference contract), which
pairs each answer with its request.

Each method the cloud serves is proxied in the call shape that costs least
while staying exact. A unary method (``Infer``, ``GetModelInfo``, health
``Check``) gets a stream-unary handler and one unary upstream call: the upstream
call is a single batch of operations, and the answer leaves with its status,
where a stream costs a batch per message, per half-close and per status plus a
pump task per call (measured in the same runs on a shared 2-core box, the tap's
p50 over a bare grpc.aio forwarder on ``Infer`` fell from 0.57-0.75 ms to
0.14-0.18 ms; docs/benchmarks.md). The handler is stream-unary, not
unary-unary, because grpc.aio never answers a unary call that arrives with no
message (the cloud answers UNIMPLEMENTED at once; through a unary handler the
call hung until the caller's deadline): the tap reads the first message itself,
and a call that brought none is relayed as a stream with no message, so the
cloud's own answer reaches the caller. A second message on a unary call is not
read, as the cloud reads only the first. Every other method the cloud serves
(``InferStream``, reflection, health ``Watch``) is proxied as a bidirectional
stream, which is wire-compatible with every call shape: it forwards exactly what
the caller sent and relays exactly what the cloud answered. Built on grpc.aio so
that any number of long-lived streams share one event loop instead of each
holding a thread. Only the methods the cloud serves (SplitInference, health,
reflection) are forwarded, each with a handler and upstream multicallables built
once at start; any other name is answered UNIMPLEMENTED by the tap itself, as the
cloud would, because both a handler cache keyed by caller-chosen names and
grpc's own client side keep memory per distinct name (10-27 MB per 5,000 names).

The tap answers one health check itself: service ``cem.tap`` is SERVING while
captures are being written and NOT_SERVING while they are not. Every other
health check goes to the upstream. The upstream may be several replicas
(``cem.targets``): calls are spread round robin over those that report SERVING,
and a relayed health ``Watch`` ends once its replica stops serving
(``attacker.tap.health_watch``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from attacker.tap.health_watch import HEALTH_WATCH_METHOD, end_watch_when_replica_stops
from attacker.tap.recorder import CaptureRecorder
from attacker.tap.relay import FirstStatus, forwardable_metadata, relay_failure, remaining_timeout
from cem.captures.records import CAPTURED_METHODS
from cem.targets import balancing_options, parse_target
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES, grpc_message_options
from protos import cem_split_pb2 as pb

logger = logging.getLogger(__name__)

TAP_HEALTH_SERVICE = "cem.tap"  # the health service name the tap answers itself: is it capturing?
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
_REFUSED_DETAILS = "the tap cannot record captures right now and runs with --on-store-failure refuse"


# The methods the cloud serves, with their call shapes (client streams, server streams): the only ones
# forwarded. grpc's client side keeps ~0.1-1.1 KB per distinct method name it has called, for good, so
# forwarding caller-invented names grew the tap by 22 MB per 20,000 long names; the tap answers those
# UNIMPLEMENTED itself, as the cloud would.
METHOD_SHAPES: dict[str, tuple[bool, bool]] = {
    f"/{service.full_name}/{method.name}": (method.client_streaming, method.server_streaming)
    for service in (
        pb.DESCRIPTOR.services_by_name["SplitInference"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )
    for method in service.methods
}
KNOWN_METHODS = frozenset(METHOD_SHAPES)
UNKNOWN_METHOD_DETAILS = "Method not found!"  # grpc's own wording, as the cloud answers

UnaryBehaviour = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[bytes]]
StreamBehaviour = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncGenerator[bytes, None]]


def tap_health_answer(request: bytes, recorder: CaptureRecorder | None) -> bytes | None:
    """The tap's own answer to a health check for ``cem.tap``; None for any other (forwarded) check."""
    try:
        service = health_pb2.HealthCheckRequest.FromString(request).service
    except DecodeError:
        return None  # not ours to judge: the upstream answers it
    if service != TAP_HEALTH_SERVICE:
        return None
    serving = recorder is not None and recorder.capturing
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    return health_pb2.HealthCheckResponse(status=status).SerializeToString()


class TapProxy(grpc.GenericRpcHandler):
    """Generic handler: a forwarding behaviour per method the cloud serves, built once; UNIMPLEMENTED otherwise."""

    def __init__(self, channel: grpc.aio.Channel, recorder: CaptureRecorder | None) -> None:
        self._channel = channel
        self._recorder = recorder
        self._handlers: dict[str, grpc.RpcMethodHandler] = {
            method: grpc.stream_unary_rpc_method_handler(self._unary_behaviour(method))
            if shape == (False, False)
            else grpc.stream_stream_rpc_method_handler(self._stream_behaviour(method))
            for method, shape in METHOD_SHAPES.items()
        }
        # A Watch stays with one replica of a replicated upstream: ended when that replica stops serving.
        self._handlers[HEALTH_WATCH_METHOD] = grpc.stream_stream_rpc_method_handler(
            end_watch_when_replica_stops(self._stream_behaviour(HEALTH_WATCH_METHOD))
        )

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self._handlers.get(handler_call_details.method, _UNKNOWN_METHOD_HANDLER)

    def _recorder_for(self, method: str) -> CaptureRecorder | None:
        """The recorder when calls of ``method`` are captured, else None."""
        return self._recorder if method in CAPTURED_METHODS else None

    def _unary_behaviour(self, method: str) -> UnaryBehaviour:
        """One message up, one answer (or a status) down, over a unary upstream call."""
        upstream = self._channel.unary_unary(method)
        relay = self._stream_behaviour(method, capture=False)  # for a call that brought no message
        recorder = self._recorder_for(method)
        health_check = method == HEALTH_CHECK_METHOD

        async def forward(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            if recorder is not None and not recorder.accepting():
                await _refuse(recorder, context)
            request = await context.read()
            if request is grpc.aio.EOF:
                return await _only_answer(relay(_no_requests(), context), context)
            if health_check:
                answer = tap_health_answer(request, self._recorder)
                if answer is not None:
                    return answer
            call = upstream(request, timeout=remaining_timeout(context), metadata=forwardable_metadata(context))
            answered = False
            try:
                response: bytes = await call
                answered = True
            except grpc.aio.AioRpcError as error:
                await relay_failure(context, error, sent_metadata=False)
                raise  # not reached: relay_failure ends the call by raising
            finally:
                if not answered:  # refused or failed upstream, or the caller cancelled or ran out of time
                    if not call.done():
                        call.cancel()
                    if recorder is not None:
                        recorder.count_rejected()
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(tuple(initial))
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            if recorder is not None:
                recorder.offer(method, request, response)
            return response

        return forward

    def _stream_behaviour(self, method: str, capture: bool = True) -> StreamBehaviour:
        """Relay a call as a bidirectional stream; record each answered request of a captured method.

        ``capture=False``: neither record nor refuse (a unary call that brought no message).
        """
        recorder = self._recorder_for(method) if capture else None
        upstream = self._channel.stream_stream(method)

        async def forward(
            request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncGenerator[bytes, None]:
            if recorder is not None and not recorder.accepting():
                await _refuse(recorder, context)
            call = upstream(timeout=remaining_timeout(context), metadata=forwardable_metadata(context))
            first_status = FirstStatus(call)
            unanswered: collections.deque[bytes] = collections.deque()
            remember = unanswered.append if recorder is not None else None
            # Our own pump task (reader/writer style) rather than a request iterator handed to the
            # call: grpc.aio leaves an iterator's consumer reading from the caller after the upstream
            # has failed. The pump is cancelled and awaited before the status is relayed.
            pump = asyncio.ensure_future(_pump_requests(request_iterator, call, remember))
            sent_metadata = False
            try:
                initial = await call.initial_metadata()
                if initial:
                    await context.send_initial_metadata(tuple(initial))
                    sent_metadata = True
                async for response in call:
                    if recorder is not None and unanswered:
                        recorder.offer(method, unanswered.popleft(), response)
                    yield response
            except grpc.aio.AioRpcError as error:
                await _stop_pump(pump)
                failure = first_status.unmask(error)
                if failure is not None:
                    await relay_failure(context, failure, sent_metadata)
            finally:
                await _stop_pump(pump)
                if not call.done():
                    call.cancel()
                if recorder is not None and unanswered:
                    recorder.count_rejected(len(unanswered))
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))

        return forward


async def _refuse(recorder: CaptureRecorder, context: grpc.aio.ServicerContext) -> None:
    """Refuse mode, while the tap cannot record: answer UNAVAILABLE instead of forwarding the call."""
    recorder.count_refused()
    await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED_DETAILS)


async def _only_answer(responses: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    """The one answer of a unary method relayed as a stream (its failure is relayed by the stream relay)."""
    answers = [response async for response in responses]
    if len(answers) != 1:  # no grpc server answers a unary method OK with no message or with several
        await context.abort(grpc.StatusCode.INTERNAL, f"the upstream answered a unary method with {len(answers)} "
                                                      "messages")
    return answers[0]


async def _unknown_method(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNKNOWN_METHOD_DETAILS)


_UNKNOWN_METHOD_HANDLER = grpc.stream_stream_rpc_method_handler(_unknown_method)


async def _no_requests() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


async def _pump_requests(request_iterator: AsyncIterator[bytes], call: grpc.aio.StreamStreamCall,
                         remember: Callable[[bytes], None] | None) -> None:
    """Copy the caller's messages to the upstream call, then half-close it."""
    try:
        async for request in request_iterator:
            if remember is not None:
                remember(request)
            await call.write(request)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the upstream call ended; the response side relays its status


async def _stop_pump(pump: asyncio.Future[None]) -> None:
    """Cancel the pump if it still runs and wait until it has, so no read of the caller is pending."""
    if not pump.done():
        pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump


class TapServer:
    """The proxy bound to ``listen`` and forwarding to ``upstream`` (any ``cem.targets`` form: one cloud or
    several replicas); start/stop inside an event loop."""

    def __init__(self, listen: str, upstream: str, recorder: CaptureRecorder | None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.listen = listen
        self.upstream = parse_target(upstream, "the upstream").text
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
        # The edge's service config: round robin over the healthy replicas the upstream target names.
        self._channel = grpc.aio.insecure_channel(self.upstream, options=[*limits, *balancing_options()])
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
