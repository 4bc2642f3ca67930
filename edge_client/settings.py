"""Client configuration: wire dtype, deadline, retry policy and budget, message limit, TLS.

Frozen and validated at construction, so a bad flag fails before any image is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cem.codec import WIRE_DTYPES
from cem.devices import DEVICE_CHOICES
from cem.errors import ConfigError
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class TlsOptions:
    """TLS towards the cloud. ``root_cert`` None trusts the system roots; a client cert and key give mTLS.

    ``server_name`` overrides the name checked against the server certificate
    (for certificates issued to a name other than the address dialled).
    """

    root_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError("expected a client certificate and key together (mTLS), got only one of them")
        for name in ("root_cert", "client_cert", "client_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"expected a readable file for TLS {name}, got {path}")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for UNAVAILABLE and DEADLINE_EXCEEDED only, within a time budget; other codes are final.

    Attempt ``n`` (1-based) that fails retryably waits
    ``min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))``, scaled by a
    random factor in ``[1 - jitter, 1]`` so many clients do not retry in lockstep.
    The whole call, attempts and waits, ends within ``budget_s`` of its start: an
    attempt's deadline is cut to what is left of the budget, and no wait or
    attempt starts once it is spent.

    The budget, not the count, is meant to be the limit: a cloud restart takes
    about 2.7 s, and the old policy (4 attempts, 0.35 s of waits) failed 58 of
    8,000 requests across one. 10 s covers the restart, gRPC's reconnect backoff
    afterwards (at most ``max_backoff_s`` plus 20 % jitter, as ``create_channel``
    aligns it with this policy) and the new server's warm-up, which answers
    UNAVAILABLE. 12 is the fewest attempts for which the budget, not the count,
    ends a call that keeps failing: the 11 waits add up to 10.5-13.2 s. A larger
    budget needs more attempts too.

    ``align_reconnect`` makes the channel re-dial a lost cloud at this policy's
    pace (see ``transport.reconnect_options``); False keeps gRPC's own reconnect
    backoff (1 s, x1.6 up to 120 s), which only suits a policy that retries as
    slowly.
    """

    max_attempts: int = 12
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    budget_s: float = 10.0
    align_reconnect: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"expected max_attempts >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ConfigError(
                "expected 0 <= initial_backoff_s <= max_backoff_s,"
                f" got {self.initial_backoff_s} and {self.max_backoff_s}"
            )
        if self.multiplier < 1:
            raise ConfigError(f"expected multiplier >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"expected jitter in [0, 1), got {self.jitter}")
        if not self.budget_s > 0:
            raise ConfigError(f"expected a retry budget > 0 s, got {self.budget_s}")

    def backoff_s(self, attempt: int) -> float:
        """Upper bound of the wait after failed attempt ``attempt`` (1-based), before jitter."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))


@dataclass(frozen=True)
class ClientSettings:
    """``timeout_s`` is the deadline of every unary attempt; ``stream_timeout_s`` that of a whole stream.

    ``timeout_s`` may not exceed ``retry.budget_s``: the budget bounds the whole
    call, so a longer attempt deadline would be cut short without saying so.

    ``seed`` fixes the generator of the edge's noise (and dropout) draws; None
    seeds it from the operating system.
    """

    wire_dtype: str = "float32"
    timeout_s: float = 10.0
    stream_timeout_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    tls: TlsOptions | None = None
    device: str = "cpu"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.wire_dtype not in WIRE_DTYPES:
            raise ConfigError(f"expected wire dtype in {WIRE_DTYPES}, got {self.wire_dtype!r}")
        if self.timeout_s <= 0 or self.stream_timeout_s <= 0:
            raise ConfigError(f"expected positive deadlines, got {self.timeout_s} s and {self.stream_timeout_s} s")
        if self.timeout_s > self.retry.budget_s:
            raise ConfigError(
                f"expected timeout_s <= retry.budget_s (the budget bounds the whole call), "
                f"got {self.timeout_s} s and {self.retry.budget_s} s"
            )
        if self.max_message_bytes < 1024:
            raise ConfigError(f"expected max_message_bytes >= 1024, got {self.max_message_bytes}")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"expected device in {DEVICE_CHOICES}, got {self.device!r}")
