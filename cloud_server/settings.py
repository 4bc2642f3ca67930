"""The one settings object of the cloud service, built in ``main()`` from CLI flags.

Validation refuses unsafe or inconsistent combinations at start-up (a TLS key
without a certificate, a client CA without server TLS, limits that cannot hold a
single sample) rather than at the first request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cem.devices import DEVICE_CHOICES
from cem.errors import ConfigError
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class ServerSettings:
    """How to serve one bundle.

    ``max_batch`` caps both a single request's batch and a micro-batch (samples);
    ``max_delay_ms`` is how long a micro-batch may wait for requests that are
    already being received; ``max_queue`` caps queued samples before new requests
    are refused with UNAVAILABLE. After SIGTERM the server keeps serving until no
    call has arrived for ``drain_s`` (at most ``grace_s / 2``), then closes the
    port; in-flight requests may take the rest of ``grace_s`` to finish.
    """

    bundle_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051
    device: str = "auto"
    max_batch: int = 256
    max_delay_ms: float = 2.0
    max_queue: int = 4096
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    workers: int = 16
    grace_s: float = 30.0
    drain_s: float = 0.5
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"expected port in 0..65535, got {self.port}")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"expected device in {DEVICE_CHOICES}, got {self.device!r}")
        if self.max_batch < 1:
            raise ConfigError(f"expected max_batch >= 1, got {self.max_batch}")
        if not 0 <= self.max_delay_ms <= 1000:
            raise ConfigError(f"expected max_delay_ms in [0, 1000], got {self.max_delay_ms}")
        if self.max_queue < self.max_batch:
            raise ConfigError(f"expected max_queue >= max_batch ({self.max_batch}), got {self.max_queue}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"expected max_message_bytes >= 1024, got {self.max_message_bytes}")
        if self.workers < 1:
            raise ConfigError(f"expected workers >= 1, got {self.workers}")
        if self.grace_s < 0:
            raise ConfigError(f"expected grace_s >= 0, got {self.grace_s}")
        if self.drain_s < 0:
            raise ConfigError(f"expected drain_s >= 0, got {self.drain_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("expected --tls-cert and --tls-key together, got only one of them")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("expected --tls-cert/--tls-key with --tls-client-ca (mTLS needs server TLS)")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"expected a readable file for {name}, got {path}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0
