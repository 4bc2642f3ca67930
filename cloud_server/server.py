"""``create_server(settings) -> (server, port)``: the cloud service, assembled and bound.

The bundle is verified and the decoder loaded inside ``create_server``, so a
tampered or incomplete bundle is refused before anything listens. ``start()``
opens the port with health NOT_SERVING, runs a warm-up inference, then flips
health to SERVING and the servicer to accepting.

``stop()`` is the SIGTERM path, in three steps:

1. health turns NOT_SERVING at once, so balancers and health-checking clients
   stop sending;
2. drain: calls keep being served until none has arrived for ``drain_s``
   (at most ``grace_s / 2``). gRPC Python hands calls to the application one at
   a time and cancels, at shutdown, every call its core received but had not yet
   handed over; under load those are requests the client sent before SIGTERM,
   and an immediate stop would answer them CANCELLED;
3. the port closes (new calls get UNAVAILABLE), calls in flight get the rest of
   ``grace_s`` to finish, then the batcher empties its queue and stops, and so
   does the metrics endpoint.

With ``settings.metrics_listen`` the Prometheus endpoint (``cloud_server.metrics``)
is bound in ``create_server`` too, beside the gRPC port, and answers from then on
(during the warm-up as well); ``metrics_port`` is its real port.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cem.wire import SERVICE_NAME, grpc_message_options
from cloud_server.batcher import MicroBatcher
from cloud_server.health import HealthServicer
from cloud_server.runtime import DecoderRuntime
from cloud_server.servicer import SplitInferenceServicer, add_to_server
from cloud_server.settings import ServerSettings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from cloud_server.metrics import CloudMetrics

logger = logging.getLogger(__name__)


class CloudServer:
    """A bound gRPC server with the lifecycle above; mirrors ``grpc.Server``'s start/stop/wait."""

    def __init__(self, settings: ServerSettings, runtime: DecoderRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self._batcher = MicroBatcher(
            runtime.predict,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_s,
            max_queue=settings.max_queue,
        )
        self._metrics: CloudMetrics | None = None
        if settings.metrics_listen is not None:
            from cloud_server.metrics import CloudMetrics  # prometheus_client: loaded only by a server that serves it

            self._metrics = CloudMetrics(runtime.manifest, max_batch=settings.max_batch)
        self._servicer = SplitInferenceServicer(runtime, self._batcher, settings, self._metrics)
        self._health = HealthServicer()  # not grpc_health's: it deadlocks when a Watch closes (cloud_server.health)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="grpc"),
            options=grpc_message_options(settings.max_message_bytes),
        )
        add_to_server(self._servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc)
        self.port = _bind(self._grpc, settings)
        self.metrics_port: int | None = None
        self._metrics_http: WSGIServer | None = None
        if self._metrics is not None:
            try:
                self.metrics_port, self._metrics_http = _serve_metrics(self._metrics, settings)
            except BaseException:
                self._grpc.stop(None)
                self._batcher.close()
                raise
        self._serving = threading.Event()
        self._warm_up_done = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        """Listen (NOT_SERVING), warm up in the background, then serve."""
        self._grpc.start()
        logger.info("listening on %s:%d (tls=%s, mtls=%s)", self.settings.host, self.port,
                    self.settings.uses_tls, self.settings.tls_client_ca is not None)
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()

    def wait_until_serving(self, timeout: float | None = None) -> bool:
        """True once SERVING; False if the warm-up failed, shutdown began first, or ``timeout`` passed."""
        self._warm_up_done.wait(timeout)
        return self._serving.is_set()

    def stop(self, grace: float | None = None, drain: float | None = None) -> threading.Event:
        """Begin the graceful shutdown above (non-blocking); the returned event is set once all has stopped.

        ``grace`` and ``drain`` default to the settings' ``grace_s`` and ``drain_s``.
        """
        with self._stop_lock:
            if self._stopping:
                return self._stopped
            self._stopping = True
        grace = self.settings.grace_s if grace is None else grace
        drain = self.settings.drain_s if drain is None else drain
        logger.info("shutting down: health NOT_SERVING, draining (quiet %.2f s), then grace %.1f s", drain, grace)
        self._health.enter_graceful_shutdown()
        threading.Thread(target=self._shut_down, args=(grace, drain), name="shutdown", daemon=True).start()
        return self._stopped

    @property
    def is_stopping(self) -> bool:
        return self._stopping

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _warm_up(self) -> None:
        try:
            self.runtime.warm_up(self._batcher.run)
            self._batcher.observer = self._metrics  # from now on decoder calls are served batches
            with self._stop_lock:
                if not self._stopping:
                    self._servicer.start_accepting()
                    self._set_health(health_pb2.HealthCheckResponse.SERVING)
                    self._serving.set()
                    logger.info("serving model %s", self.runtime.model_id)
        except Exception:
            logger.exception("warm-up inference failed; the server stays NOT_SERVING")
        finally:
            self._warm_up_done.set()

    def _shut_down(self, grace: float, drain: float) -> None:
        started = time.monotonic()
        limit = started + grace / 2
        while True:
            quiet_since = max(started, self._servicer.last_call_at)
            now = time.monotonic()
            if now - quiet_since >= drain or now >= limit:
                break
            time.sleep(min(0.02, drain))
        remaining = max(0.0, grace - (time.monotonic() - started))
        logger.info("closing the port; in-flight calls have %.1f s to finish", remaining)
        self._grpc.stop(remaining).wait()
        self._batcher.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        logger.info("server stopped")
        self._stopped.set()

    def _set_health(self, status: int) -> None:
        self._health.set("", status)
        self._health.set(SERVICE_NAME, status)


def _bind(server: grpc.Server, settings: ServerSettings) -> int:
    """Bind the address (TLS when configured, mTLS when a client CA is given); returns the port."""
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            key_pair = (Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())
            client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca is not None else None
            credentials = grpc.ssl_server_credentials(
                [key_pair], root_certificates=client_ca, require_client_auth=client_ca is not None
            )
            port = server.add_secure_port(settings.address, credentials)
        else:
            port = server.add_insecure_port(settings.address)
    except RuntimeError as exc:  # a runtime failure (the port is taken), not a bad setting: exit 1, not 2
        raise OSError(f"could not bind {settings.address}: {exc}") from exc
    if port == 0:
        raise OSError(f"could not bind {settings.address} (already in use?)")
    return port


def _serve_metrics(metrics: CloudMetrics, settings: ServerSettings) -> tuple[int, WSGIServer]:
    """Bind the /metrics endpoint; a taken port is an OSError (exit 1), as for the gRPC port."""
    from cloud_server.metrics import serve_metrics

    address = settings.metrics_address
    assert address is not None
    host, port = address
    try:
        bound, server = serve_metrics(metrics.registry, host, port)
    except OSError as exc:
        raise OSError(f"could not bind the metrics endpoint {settings.metrics_listen}: {exc}") from exc
    logger.info("Prometheus metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound)
    return bound, server


def create_server(settings: ServerSettings) -> tuple[CloudServer, int]:
    """Verify the bundle, load the decoder, bind the port (0 picks a free one); call ``start()`` next."""
    runtime = DecoderRuntime(settings.bundle_dir, settings.device)
    server = CloudServer(settings, runtime)
    return server, server.port
