"""Channel construction and the ONE place the edge translates gRPC failures.

``call_with_retry`` retries UNAVAILABLE and DEADLINE_EXCEEDED with exponential
backoff and turns every other ``grpc.RpcError`` (and the last retryable one)
into ``RemoteCallError``, so callers of ``EdgeClient`` see the kernel's error
tree, never grpc's.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Callable, TypeVar

import grpc

from cem.errors import CEMError
from cem.wire import grpc_message_options
from edge_client.settings import ClientSettings, RetryPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class RemoteCallError(CEMError):
    """The cloud answered with a non-OK status (after retries, where the code allows them)."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str, attempts: int) -> None:
        self.method = method
        self.code = code
        self.details = details
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{method} failed with {code.name}{tries}: {details}")


def to_remote_error(method: str, exc: grpc.RpcError, attempts: int = 1) -> RemoteCallError:
    return RemoteCallError(method, exc.code(), exc.details() or "", attempts)


def create_channel(target: str, settings: ClientSettings) -> grpc.Channel:
    """An insecure channel, or a TLS/mTLS one when ``settings.tls`` is set; both with the shared message limit."""
    options: list[tuple[str, str | int]] = list(grpc_message_options(settings.max_message_bytes))
    tls = settings.tls
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.root_cert),
        private_key=_read(tls.client_key),
        certificate_chain=_read(tls.client_cert),
    )
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, credentials, options=options)


def _read(path: Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def call_with_retry(
    method: str,
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``call`` (one RPC attempt with its own deadline) until it succeeds or fails for good."""
    rng = rng or random.Random()
    attempt = 1
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE_CODES or attempt >= policy.max_attempts:
                raise to_remote_error(method, exc, attempt) from None
            wait = policy.backoff_s(attempt) * (1.0 - policy.jitter * rng.random())
            logger.warning("%s attempt %d failed with %s; retrying in %.3f s", method, attempt, exc.code().name, wait)
            sleep(wait)
            attempt += 1
