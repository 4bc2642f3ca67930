"""The tap's Prometheus metrics: the recorder's counters, read at scrape time.

A custom collector (not counters incremented on the forwarding path) so the
numbers on /metrics are exactly the ones ``--json`` prints at exit and the
forwarding path pays nothing for them. ``cem_tap_capturing`` is the fail-open
signal: 0 while traffic flows but is not being recorded. In relay mode
(``attacker.tap.wire_relay``) the relay's counters are read the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
# --mode relay only: the names ``attacker.tap.cli.relay_counters`` gives WireRelay.stats()
RELAY_COUNTER_HELP = {
    "relay_connections": "edge connections the relay accepted",
    "relay_upstream_failures": "edge connections closed because the upstream could not be reached",
    "relay_dropped_chunks": "chunks not handed to the parser because the relay had given up their connection's capture",
    "relay_evicted_connections": "connections whose capture the relay gave up, heaviest first, to stay within its "
                                 "memory budget (their bytes still flow)",
    "relay_discarded_connections": "connections given up whose queued chunks the parser skipped unread, once what "
                                   "such connections still held passed half the memory budget",
    "relay_lost_connections": "connections no longer captured, for any reason: not HTTP/2, a protocol error, a budget, "
                              "the parser failing",
    "relay_streams_ignored": "feature calls not captured because their connection had too many open",
    "relay_oversized_calls": "feature calls no longer captured: a message or their unanswered requests too large",
    "relay_undecodable_messages": "feature-call messages in an encoding the relay cannot undo",
    "relay_refused_calls": "feature calls the server refused unprocessed (REFUSED_STREAM, or above its GOAWAY's last "
                           "stream id), which gRPC retries: neither recorded nor counted rejected",
    "relay_over_budget_connections": "connections no longer captured: their calls and buffered frames held more than "
                                     "the per-connection budget",
    "relay_overworked_connections": "connections no longer captured: more parse work (inflating, decoding headers) "
                                    "than their bytes on the wire pay for",
    "relay_parser_failures": "times the relay's parser thread failed, giving up every capture (bytes still flow)",
    "relay_dropped_after_stop": "answered feature requests the parser read after the stop stopped waiting for it, "
                                "not recorded (the recorder was closing)",
}


class RecorderCollector(Collector):
    def __init__(self, recorder: CaptureRecorder, relay_counters: Callable[[], dict[str, int]] | None = None) -> None:
        self._recorder = recorder
        self._relay_counters = relay_counters

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._recorder.stats().to_dict()
        for name, help_text in COUNTER_HELP.items():
            yield CounterMetricFamily(f"cem_tap_{name}", help_text, value=stats[name])
        yield GaugeMetricFamily("cem_tap_capturing", "1 while captures are being written, 0 while traffic flows "
                                "unrecorded", value=1.0 if self._recorder.capturing else 0.0)
        yield GaugeMetricFamily("cem_tap_queue_depth", "captures waiting to be written",
                                value=self._recorder.queue_depth())
        if self._relay_counters is not None:
            relay = self._relay_counters()
            for name, help_text in RELAY_COUNTER_HELP.items():
                yield CounterMetricFamily(f"cem_tap_{name}", help_text, value=relay[name])


def serve_metrics(recorder: CaptureRecorder, listen: str,
                  relay_counters: Callable[[], dict[str, int]] | None = None) -> tuple[int, WSGIServer]:
    """Serve /metrics on ``listen`` (HOST:PORT, port 0 picks one); returns the bound port and the server.

    ``relay_counters``: in relay mode, the relay's counters (named as ``RELAY_COUNTER_HELP``).
    """
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(RecorderCollector(recorder, relay_counters))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server.server_port, server
