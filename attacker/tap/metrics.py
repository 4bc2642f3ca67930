"""The tap's Prometheus metrics: the recorder's counters, read at scrape time.

A custom collector (not counters incremented on the forwarding path) so the
numbers on /metrics are exactly the ones ``--json`` prints at exit and the
forwarding path pays nothing for them. ``cem_tap_capturing`` is the fail-open
signal: 0 while traffic flows but is not being recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from attacker.tap.recorder import CaptureRecorder

COUNTER_HELP = {
    "offered": "answered feature requests handed to the recorder",
    "recorded": "captures durably written and indexed",
    "dropped_queue_full": "captures dropped because the write queue was full",
    "dropped_write_failed": "captures dropped because the capture store could not be written",
    "unparsable": "captured-method requests that were not valid protobuf",
    "invalid": "requests with a tensor header no index can hold (non-finite scale/offset)",
    "rejected_upstream": "feature requests the upstream did not answer OK (forwarded, not recorded)",
    "duplicates": "byte-identical resends of a recorded request (client retries), not recorded twice",
    "refused": "calls refused with UNAVAILABLE because captures could not be written (refuse mode)",
    "shards": "shard files written",
}


class RecorderCollector(Collector):
    def __init__(self, recorder: CaptureRecorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._recorder.stats().to_dict()
        for name, help_text in COUNTER_HELP.items():
            yield CounterMetricFamily(f"cem_tap_{name}", help_text, value=stats[name])
        yield GaugeMetricFamily("cem_tap_capturing", "1 while captures are being written, 0 while traffic flows "
                                "unrecorded", value=1.0 if self._recorder.capturing else 0.0)
        yield GaugeMetricFamily("cem_tap_queue_depth", "captures waiting to be written",
                                value=self._recorder.queue_depth())


def serve_metrics(recorder: CaptureRecorder, listen: str) -> tuple[int, WSGIServer]:
    """Serve /metrics on ``listen`` (HOST:PORT, port 0 picks one); returns the bound port and the server."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(RecorderCollector(recorder))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server.server_port, server
