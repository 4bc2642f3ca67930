"""The standard health service (``grpc.health.v1``), without grpc_health's deadlock on a closing Watch.

Clients that balance over replicas keep a health ``Watch`` open on each of them
(``cem.targets``), so Watches now come and go while the server changes its health.
``grpc_health.v1.health.HealthServicer`` sends each update while holding its lock,
and a send waits for the server's completion-queue thread to confirm it; that same
thread runs the clean-up of a Watch that closes, which takes the lock. A Watch that
closed while ``set`` was sending to another deadlocked the whole server: in a
loopback reproduction (six Watches that hang up on NOT_SERVING, then ``set``), 20
of 20 tries hung, against 0 of 20 when nobody hung up. The tap ends a relayed
Watch exactly then (``attacker.tap.health_watch``), and stopping a cloud behind it
hung the cloud's shutdown.

Here the lock only guards the table of statuses and watchers; updates are sent
outside it. Each watcher gets its updates in order and ends on the latest: every
update carries a per-service version, and a watcher skips one older than what it
has already sent. Otherwise it answers as grpc_health does (NOT_FOUND for ``Check``
of an unknown service, SERVICE_UNKNOWN for ``Watch``; ``enter_graceful_shutdown``
turns every service NOT_SERVING for good).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SendResponse = Callable[[health_pb2.HealthCheckResponse | None], None]


class _Watcher:
    """One open Watch: sends a service's statuses to it in version order, skipping any already overtaken."""

    def __init__(self, send: SendResponse) -> None:
        self._send = send
        self._lock = threading.Lock()  # held while sending, never together with the servicer's lock
        self._sent_version = -2  # below the version of an unknown service (-1), which is sent too

    def update(self, version: int, status: int) -> None:
        with self._lock:
            if version > self._sent_version:
                self._sent_version = version
                self._send(health_pb2.HealthCheckResponse(status=status))


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``set(service, status)``, ``enter_graceful_shutdown()``, and the Check and Watch RPCs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # service -> (version, status); "" serves from the start, as in grpc_health
        self._status: dict[str, tuple[int, int]] = {"": (0, health_pb2.HealthCheckResponse.SERVING)}
        self._watchers: dict[str, set[_Watcher]] = {}
        self._shutting_down = False

    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        with self._lock:
            entry = self._status.get(request.service)
        if entry is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=entry[1])

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext,
              send_response_callback: SendResponse | None = None) -> None:
        """Non-blocking (no thread held per Watch): gRPC hands us the function that sends an answer."""
        assert send_response_callback is not None, "registered with experimental_non_blocking"
        service = request.service
        watcher = _Watcher(send_response_callback)
        with self._lock:
            version, status = self._status.get(service, (-1, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN))
            self._watchers.setdefault(service, set()).add(watcher)
        context.add_callback(lambda: self._forget(service, watcher))  # runs on gRPC's completion-queue thread
        watcher.update(version, status)

    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]
    Watch.experimental_thread_pool = None  # type: ignore[attr-defined]

    def set(self, service: str, status: int) -> None:
        """Set ``service``'s status and tell its watchers (ignored once shutting down, as grpc_health does)."""
        with self._lock:
            if self._shutting_down:
                return
            version = self._status.get(service, (-1, status))[0] + 1
            self._status[service] = (version, status)
            watchers = list(self._watchers.get(service, ()))
        for watcher in watchers:
            watcher.update(version, status)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: later ``set`` calls are ignored."""
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            updates: list[tuple[_Watcher, int]] = []
            for service, (version, _) in self._status.items():
                self._status[service] = (version + 1, not_serving)
                updates += [(watcher, version + 1) for watcher in self._watchers.get(service, ())]
        for watcher, version in updates:
            watcher.update(version, not_serving)

    def _forget(self, service: str, watcher: _Watcher) -> None:
        with self._lock:
            watchers = self._watchers.get(service)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[service]
