"""Relaying a health ``Watch`` when the upstream is several replicas: end it once its replica stops serving.

A ``Watch`` is one long call, so the tap's balancer sends it to one replica and
it stays there. An edge that health-checks the tap (every ``EdgeClient`` does,
``cem.targets``) would then take that one replica's health for the whole
upstream's: when the replica began a graceful shutdown, the edge saw
NOT_SERVING, stopped sending to the tap altogether although the other replicas
served, and stayed so until the replica closed the Watch at the end of its
grace period (30 s by default), long past the edge's 10 s retry budget.

So a relayed Watch of the served service (``cem.wire.SERVICE_NAME``, the one the
tap's balancer health-checks too) ends with UNAVAILABLE right after relaying an
answer other than SERVING. gRPC's health client restarts at once a Watch that
had answered (its backoff only follows Watches that never did), and the tap's
balancer, which has seen the same answer on its own Watch of that replica, sends
the new one to a replica that serves; when none does, that call fails and the
edge sees the upstream unhealthy, as it is. Until the balancer has seen it (the
two answers leave the replica one after the other), the new Watch may land on
the same replica and end the same way, a few times at most. A Watch of any
other service is relayed unchanged: the balancer does not check it, so ending
it could send the watcher back to the same replica again and again.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from cem.wire import SERVICE_NAME

HEALTH_WATCH_METHOD = "/grpc.health.v1.Health/Watch"
REPLICA_STOPPED_DETAILS = "the replica this health watch was relayed to is not serving; watch again"

StreamBehaviour = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncGenerator[bytes, None]]


def watch_status(response: bytes) -> int | None:
    """The status of a serialised ``HealthCheckResponse``; None for bytes that are not one."""
    try:
        return health_pb2.HealthCheckResponse.FromString(response).status
    except DecodeError:
        return None


def watched_service(request: bytes) -> str | None:
    """The service a serialised ``HealthCheckRequest`` asks about; None for bytes that are not one."""
    try:
        return health_pb2.HealthCheckRequest.FromString(request).service
    except DecodeError:
        return None


def end_watch_when_replica_stops(relay: StreamBehaviour) -> StreamBehaviour:
    """``relay`` (the plain stream relay of Watch), ended as the module docstring says."""

    async def forward(
        request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        watched: list[str | None] = []

        async def requests() -> AsyncGenerator[bytes, None]:
            async for request in request_iterator:  # one message; the upstream answers only once it is sent
                if not watched:
                    watched.append(watched_service(request))
                yield request

        responses = relay(requests(), context)
        try:
            async for response in responses:
                yield response
                status = watch_status(response)
                if watched == [SERVICE_NAME] and status not in (health_pb2.HealthCheckResponse.SERVING, None):
                    break
            else:
                return  # the upstream ended the Watch itself; the relay passed its status on
        finally:
            await responses.aclose()  # cancels the upstream Watch (the relay's own cleanup)
        await context.abort(grpc.StatusCode.UNAVAILABLE, REPLICA_STOPPED_DETAILS)

    return forward
