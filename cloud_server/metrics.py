"""The cloud's Prometheus metrics: traffic, latency, micro-batching, and the served bundle's privacy settings.

Observed where the work happens, not by extra passes: the servicer counts each
request message once it has an outcome (``CallMeter.finish``, before the answer
leaves the handler), and the micro-batcher reports each decoder call with the
timestamps it already takes (``CloudMetrics.observe_batch``, before it wakes the
requests). A request is therefore counted by the time its caller has the answer.

The privacy gauges are what no serving dashboard shows by itself: the σ the edge
must add, the CEM λ the model was trained with (in the units its manifest
records, ``cem.units``) and the ξ of Theorem 1 with its kind (``cem.bounds``): an
``estimate`` is labelled so and never presented as a guarantee.

Each ``CloudMetrics`` has its own ``CollectorRegistry`` (not the process-wide
default), so several servers in one process (the tests, a benchmark) keep apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cem.bounds import privacy_bound
from cem.codec import enum_to_dtype
from cem.errors import TensorCodecError
from cem.manifest import Manifest
from protos import cem_split_pb2 as pb

METHODS = ("Infer", "InferStream", "GetModelInfo")
# Sub-millisecond to tens of seconds: a CPU decoder answers a small batch in about a millisecond, a crowd queues.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
UNKNOWN_DTYPE = "unknown"  # unparseable bytes, no features tensor, or a dtype number that is no wire dtype


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself: a full micro-batch is its own bucket."""
    bounds = {1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch} | {max_batch}
    return tuple(float(b) for b in sorted(bounds))


def wire_dtype_label(request: pb.InferRequest) -> str:
    """The features' wire dtype as a label value; anything a client can make up maps to ``unknown``."""
    if not request.HasField("features"):
        return UNKNOWN_DTYPE
    try:
        return enum_to_dtype(request.features.dtype)
    except TensorCodecError:
        return UNKNOWN_DTYPE


class CloudMetrics:
    """The metrics of one cloud server, in a registry of their own (``registry``)."""

    def __init__(self, manifest: Manifest, *, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cem_cloud_requests", "request messages handled, by gRPC method and status code",
                                ["method", "code"], registry=r)
        self.request_seconds = Histogram(
            "cem_cloud_request_duration_seconds", "time in the handler per request message, parsing to the answer "
            "(queue wait and decoder included; gRPC's own transport time not)", ["method"], buckets=LATENCY_BUCKETS,
            registry=r)
        self.queue_seconds = Histogram(
            "cem_cloud_queue_wait_seconds", "per served request, from handing its features to the micro-batcher "
            "until the decoder call that serves it starts", buckets=LATENCY_BUCKETS, registry=r)
        self.decoder_seconds = Histogram(
            "cem_cloud_decoder_seconds", "per decoder call (one micro-batch), the decoder's compute time; "
            "rate of the sum = share of time the decoder is busy", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "cem_cloud_served_batch_size", "samples per decoder call (the served micro-batch); mean = sum / count",
            buckets=batch_buckets(max_batch), registry=r)
        self.in_flight = Gauge("cem_cloud_requests_in_flight", "request messages being handled now", registry=r)
        self.received_bytes = Counter(
            "cem_cloud_received_bytes", "serialised Infer/InferStream request bytes, by the features' wire dtype",
            ["dtype"], registry=r)
        self.sent_bytes = Counter("cem_cloud_sent_bytes", "serialised inference response bytes, by the logits' "
                                  "wire dtype", ["dtype"], registry=r)
        for method in METHODS:  # present from the start, so rate() has a 0 to begin from
            self.requests.labels(method, grpc.StatusCode.OK.name)
            self.request_seconds.labels(method)
        self._set_privacy_gauges(manifest)

    def _set_privacy_gauges(self, manifest: Manifest) -> None:
        r, model_id = self.registry, manifest.model_id
        Gauge("cem_cloud_noise_std", "σ: std of the Gaussian noise the edge adds to the features (manifest "
              "noise_std)", ["model_id"], registry=r).labels(model_id).set(manifest.noise_std)
        lam = Gauge("cem_cloud_cem_lambda", "CEM λ the served model was trained with, in the units its manifest "
                    "records (units=\"paper\": the paper's λ); 0 for a model trained without CEM",
                    ["model_id", "units"], registry=r)
        if manifest.cem is not None:
            lam.labels(model_id, manifest.cem.units).set(manifest.cem.lam)
        else:  # training writes no cem record when λ = 0
            lam.labels(model_id, "paper").set(0.0)
        xi = Gauge("cem_cloud_privacy_bound_xi", "ξ of Theorem 1 (per-pixel MSE scale) by kind: estimate = H(x) "
                   "estimated, can exceed the true floor, NOT a guarantee; relative = H(x) := 0, orders models of "
                   "one data set, not an MSE floor; floor = proven (no bundle has one)", ["model_id", "kind"],
                   registry=r)
        bound = privacy_bound(manifest.metrics)
        if bound is not None:
            for value in (bound, bound.get("relative")):
                if isinstance(value, dict):
                    xi.labels(model_id, value["kind"]).set(value["xi"])

    def start_call(self, method: str, received_bytes: int | None = None) -> CallMeter:
        """A request message has arrived; ``received_bytes`` for the inference methods (their payload's size)."""
        self.in_flight.inc()
        return CallMeter(self, method, received_bytes)

    def observe_batch(self, size: int, started_ns: int, finished_ns: int, enqueued_ns: Sequence[int]) -> None:
        """One decoder call of ``size`` samples (``time.perf_counter_ns`` stamps; one per request it served)."""
        self.batch_size.observe(size)
        self.decoder_seconds.observe((finished_ns - started_ns) / 1e9)
        for queued in enqueued_ns:
            self.queue_seconds.observe(max(0, started_ns - queued) / 1e9)


class CallMeter:
    """One request message between arrival and outcome; ``finish`` exactly once."""

    __slots__ = ("_dtype", "_method", "_metrics", "_received", "_started_ns")

    def __init__(self, metrics: CloudMetrics, method: str, received_bytes: int | None) -> None:
        self._metrics = metrics
        self._method = method
        self._received = received_bytes
        self._started_ns = time.perf_counter_ns()
        self._dtype = UNKNOWN_DTYPE

    def parsed(self, request: pb.InferRequest) -> None:
        """The message parsed as ``request``: its features' wire dtype labels the bytes received."""
        self._dtype = wire_dtype_label(request)

    def finish(self, code: grpc.StatusCode, sent_bytes: int = 0, sent_dtype: str = UNKNOWN_DTYPE) -> None:
        """Count the outcome: ``code``, and for an answered inference ``sent_bytes`` of ``sent_dtype`` logits."""
        m = self._metrics
        m.requests.labels(self._method, code.name).inc()
        m.request_seconds.labels(self._method).observe((time.perf_counter_ns() - self._started_ns) / 1e9)
        if self._received is not None:
            m.received_bytes.labels(self._dtype).inc(self._received)
        if sent_bytes:
            m.sent_bytes.labels(sent_dtype).inc(sent_bytes)
        m.in_flight.dec()


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[int, WSGIServer]:
    """Serve ``registry`` on /metrics at ``host:port`` (port 0 picks one); returns the bound port and the server."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_port, server
