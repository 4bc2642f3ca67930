"""Captures: the contract between the channel tap, which writes them, and the audit service, which reads them.

- ``records``: ``CaptureRecord``, one intercepted request, and how it is parsed off the wire.
- ``store``: the on-disk layout (safetensors shards + a SQLite index) and ``CaptureWriter``.
- ``reader``: ``CaptureStore``, the read-only view, and ``CapturedFeatures``, what an audit
  consumes. It decodes to torch tensors, so only the reader imports torch: the tap never does.
"""
