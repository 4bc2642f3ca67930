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


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) -> (host without brackets, port); ConfigError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected --metrics-listen HOST:PORT with a port in 0..65535, got {listen!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ServerSettings:
    """How to serve one bundle.

    ``max_batch`` caps both a single request's batch and a micro-batch (samples);
    ``max_delay_ms`` is how long a micro-batch may wait for requests that are
    already being received; ``max_queue`` caps queued samples before new requests
    are refused with UNAVAILABLE. After SIGTERM the server keeps serving until no
    call has arrived for ``drain_s`` (at most ``grace_s / 2``), then closes the
    port; in-flight requests may take the rest of ``grace_s`` to finish.
    ``metrics_listen`` (``HOST:PORT``, port 0 picks one; None: off) serves
    Prometheus metrics over HTTP (``cloud_server.metrics``).
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
    metrics_listen: str | None = None

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
        if self.metrics_listen is not None:
            parse_listen(self.metrics_listen)
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"expected a readable file for {name}, got {path}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` as (host without IPv6 brackets, port), or None when metrics are off."""
        return None if self.metrics_listen is None else parse_listen(self.metrics_listen)

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0
