"""Where one request's time goes inside the cloud, stage by stage.

A ``StageClock`` starts when gRPC hands the request bytes to the handler and
records, in order:

- ``parse``: bytes -> ``InferRequest``;
- ``validate``: every request check and the tensor decode (``decode_request``);
- ``queue``: from handing the features to the micro-batcher until its decoder call starts;
- ``decoder``: that call (concatenating a micro-batch included);
- ``resume``: from the decoder's end until the handler thread runs again;
- ``respond``: building and serialising the response.

What happens before the handler (gRPC receiving the bytes) and after it (gRPC
sending the answer) belongs to the transport; a benchmark measures it as the
floor, a bare grpcio server answering at once. The clock costs a few
``perf_counter_ns`` calls per request; its result travels only when the caller
asks (``cem.wire.TIMING_REQUEST_KEY``).
"""

from __future__ import annotations

import time

from cem.wire import format_server_timing

STAGES: tuple[str, ...] = ("parse", "validate", "queue", "decoder", "resume", "respond")


class StageClock:
    """Durations between consecutive marks; ``mark(stage)`` closes ``stage`` now or at ``at_ns``.

    A clock built with ``enabled=False`` (a call that did not ask for timing, or
    a stream message) records nothing, so untimed requests do not pay for it.
    """

    __slots__ = ("_last_ns", "durations_ns", "enabled")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._last_ns = time.perf_counter_ns() if enabled else 0
        self.durations_ns: list[tuple[str, int]] = []

    def mark(self, stage: str, at_ns: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter_ns() if at_ns is None else at_ns
        self.durations_ns.append((stage, now - self._last_ns))
        self._last_ns = now

    def header(self) -> str:
        """The ``cem-server-timing`` value: milliseconds per stage."""
        return format_server_timing((name, ns / 1e6) for name, ns in self.durations_ns)


UNTIMED = StageClock(enabled=False)  # shared: a disabled clock keeps no state
