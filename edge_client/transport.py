"""Channel construction and the ONE place the edge translates gRPC failures.

``call_with_retry`` retries UNAVAILABLE and DEADLINE_EXCEEDED with exponential
backoff within the policy's time budget and turns every other ``grpc.RpcError``
(and the last retryable one) into ``RemoteCallError``, so callers of
``EdgeClient`` see the kernel's error tree, never grpc's.

Riding out a cloud restart takes two parts that only work together: a budget
in seconds rather than attempts, and a channel that re-dials about as often as
the policy retries (``reconnect_options``). Raising the attempt count alone
(82a2cc6, reverted) still failed requests: with gRPC's default reconnect backoff
(1 s, x1.6 up to 120 s) the channel stays in TRANSIENT_FAILURE, where every
attempt fails at once without dialling, for seconds after the cloud is back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from cem.errors import CEMError, ConfigError
from cem.targets import GrpcTarget, balancing_options, parse_target
from cem.wire import grpc_message_options
from edge_client.settings import ClientSettings, RetryPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
GRPC_MIN_RECONNECT_BACKOFF_MS = 100  # gRPC core raises smaller reconnect backoffs to this


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


def reconnect_options(policy: RetryPolicy) -> list[tuple[str, int]]:
    """Channel options that make gRPC re-dial a lost cloud about as often as ``policy`` retries (none when
    ``policy.align_reconnect`` is off).

    With gRPC's defaults (first re-dial after 1 s, then x1.6 up to 120 s) the
    channel stays in TRANSIENT_FAILURE for seconds after a restarted cloud is
    back, and attempts in that time fail without dialling. gRPC keeps its own
    multiplier (1.6) and floors both values at 100 ms. ``grpc.min_reconnect_backoff_ms``
    is left at gRPC's 20 s on purpose: despite its name it is the minimum connect
    timeout, and a short one would abort slow (TLS, long-haul) handshakes forever.
    """
    if not policy.align_reconnect:
        return []
    initial_ms = max(GRPC_MIN_RECONNECT_BACKOFF_MS, round(policy.initial_backoff_s * 1000))
    max_ms = max(GRPC_MIN_RECONNECT_BACKOFF_MS, round(policy.max_backoff_s * 1000))
    return [("grpc.initial_reconnect_backoff_ms", initial_ms), ("grpc.max_reconnect_backoff_ms", max_ms)]


def check_target(target: str, settings: ClientSettings, flag: str = "the target") -> GrpcTarget:
    """``target`` checked (``cem.targets``), and checked against ``settings.tls``; ConfigError otherwise.

    TLS checks one host name against every replica, and a list of addresses
    (``ipv4:A:P,B:P``) gives gRPC none to check: it would refuse every handshake
    with "Hostname Verification Check failed", so such a target needs
    ``TlsOptions.server_name``.
    """
    checked = parse_target(target, flag)
    if settings.tls is not None and checked.lists_several_addresses and not settings.tls.server_name:
        raise ConfigError(
            f"expected a TLS server name (--tls-server-name, TlsOptions.server_name: the name in the replicas' "
            f"certificates) with TLS to a list of addresses, got {target!r} and none"
        )
    return checked


def create_channel(target: str, settings: ClientSettings) -> grpc.Channel:
    """An insecure channel, or a TLS/mTLS one when ``settings.tls`` is set, to any target ``check_target`` accepts.

    Both carry the shared message limit, re-dial as often as ``settings.retry``
    retries, and spread calls round robin over the healthy replicas the target
    resolves to (``cem.targets.balancing_options``). Only this module's retry loop
    retries; the service config adds no retry policy of gRPC's own.
    """
    check_target(target, settings)
    options: list[tuple[str, str | int]] = list(grpc_message_options(settings.max_message_bytes))
    options += reconnect_options(settings.retry)
    options += balancing_options()
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
    call: Callable[[float], T],
    policy: RetryPolicy,
    *,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``call(deadline_s)`` (one RPC attempt) until it succeeds, fails for good, or ``policy.budget_s`` is spent.

    Each attempt's deadline is ``min(timeout_s, what is left of the budget)`` and
    no wait or attempt starts past the budget, so the call ends within
    ``policy.budget_s`` of its start whatever the deadlines and backoffs.

    Attempts fail fast: while the cloud is down the channel is in
    TRANSIENT_FAILURE, an attempt ends at once with UNAVAILABLE and gRPC's reason
    (so a dead cloud is reported as UNAVAILABLE), and the budget goes on backoff
    waits while the channel re-dials on its own schedule. ``wait_for_ready`` is
    not used: a waiting attempt ends with DEADLINE_EXCEEDED whether the cloud
    never came back or answered too slowly, and telling them apart takes
    ``Channel.subscribe``, whose polling thread raises "Channel closed!" when a
    client is closed soon after (grpc/grpc#18995).
    """
    end = clock() + policy.budget_s
    attempt = 1
    while True:
        try:
            return call(min(timeout_s, end - clock()))
        except grpc.RpcError as exc:
            error = to_remote_error(method, exc, attempt)
        if error.code not in RETRYABLE_CODES or attempt >= policy.max_attempts:
            raise error
        rng = rng or random.Random()  # seeded from the OS (~13 µs) only once a retry needs jitter
        wait = policy.backoff_s(attempt) * (1.0 - policy.jitter * rng.random())
        if clock() + wait >= end:
            logger.warning("%s attempt %d failed with %s; the %.1f s retry budget is spent",
                           method, attempt, error.code.name, policy.budget_s)
            raise error
        logger.warning("%s attempt %d failed with %s; retrying in %.3f s", method, attempt, error.code.name, wait)
        sleep(wait)
        if clock() >= end:  # the sleep overran the budget: no attempt with a deadline in the past
            raise error
        attempt += 1
