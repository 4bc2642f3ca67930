"""The channel tap: a transparent gRPC proxy, or a TCP byte relay, that records intercepted features.

- ``proxy``: ``TapServer`` forwards every call as opaque bytes (grpc.aio); ``--mode proxy``, the default.
- ``wire_relay``: ``WireRelay`` forwards the TCP bytes unchanged and reads a copy off the forwarding path;
  ``--mode relay``.
- ``h2_reader``: ``H2Reader``, one connection's copy read as HTTP/2 (frames, HPACK header blocks).
- ``grpc_calls``: ``GrpcCalls``, the gRPC calls those frames carry, paired by the proxy's rules for the recorder.
- ``reader_limits``: every bound and budget of that reading, and its counters.
- ``relay_budget``: the queue to the relay's parser thread and the global budget bounding what enters it.
- ``parse_work``: who pays for the parser's work: each connection's account, the pool their allowances come from.
- ``relay``: carrying one call faithfully (metadata and deadline up, the upstream's status down).
- ``health_watch``: a relayed health Watch ends when its replica of a replicated upstream stops serving.
- ``recorder``: ``CaptureRecorder``, the bounded queue and writer thread off the forwarding path.
- ``metrics``: the recorder's counters as Prometheus metrics.
- ``cli``: ``cem-tap``.

What a capture is and how it is stored and read is the kernel's (``cem.captures``),
because the tap writes it and the audit service reads it.
"""
