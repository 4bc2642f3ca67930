"""The channel tap: a transparent gRPC proxy that records intercepted features.

- ``proxy``: ``TapServer`` forwards every call as opaque bytes (grpc.aio).
- ``recorder``: ``CaptureRecorder``, the bounded queue and writer thread off the forwarding path.
- ``store``: ``CaptureWriter``, the crash-safe shard files + SQLite (WAL) index.
- ``reader``: ``CaptureStore``, the read-only view the audit service uses (imports torch,
  so the proxy process never loads it).
- ``cli``: ``cem-tap``.
"""
