"""The service's errors and the ONE place they become gRPC status codes.

Every handler runs inside ``status_for``'s table: a known error gets its code and
its own message (written to be safe for a remote caller: shapes, sizes, ids,
never feature values); anything else, the rest of the ``CEMError`` tree included,
is logged with its traceback and answered INTERNAL, so no call ever ends as
UNKNOWN.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from cem.errors import BundleError, CEMError, ConfigError, TensorCodecError, TensorTooLargeError

logger = logging.getLogger(__name__)

MAX_STATUS_CHARS = 1024


class ServiceError(CEMError):
    """Base of the errors the servicer raises on purpose."""


class InvalidRequestError(ServiceError, ValueError):
    """A request is malformed apart from its tensor (missing features, ids that do not fit the batch)."""


class RequestTooLargeError(ServiceError):
    """A request asks for more than the service's limits (batch size)."""


class ModelNotFoundError(ServiceError):
    """A request names a model id other than the one served here."""


class ServiceUnavailableError(ServiceError):
    """The service cannot take the request now: warming up, overloaded or shutting down."""


# Order matters: the first matching class wins, so subclasses come before their bases.
_STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (TensorTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RequestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TensorCodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (ServiceUnavailableError, grpc.StatusCode.UNAVAILABLE),
    # The rest of the tree (data sets, metrics, registry names, the other apps' errors) never arises
    # here, and neither does a bare ServiceError: one that does is a bug like any other exception.
    (CEMError, grpc.StatusCode.INTERNAL),
)


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status ``exc`` maps to, with no side effect (the metrics count it before ``abort_with`` answers)."""
    return next((code for error_type, code in _STATUS_TABLE if isinstance(exc, error_type)), grpc.StatusCode.INTERNAL)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for any exception; INTERNAL ones are logged with their traceback, their message withheld."""
    code = code_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.error("unexpected error while serving a request", exc_info=exc)
        return code, f"internal error ({type(exc).__name__}); see the server log"
    return code, str(exc)


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status ``exc`` maps to (raises, as ``context.abort`` does)."""
    code, message = status_for(exc)
    if len(message) > MAX_STATUS_CHARS:  # a status travels in a trailer; keep it far below the metadata limit
        message = message[:MAX_STATUS_CHARS] + f"... ({len(message)} characters)"
    if code is not grpc.StatusCode.INTERNAL:
        logger.info("request refused with %s: %s", code.name, message)
    context.abort(code, message)
    raise AssertionError("grpc.ServicerContext.abort returned instead of raising")
