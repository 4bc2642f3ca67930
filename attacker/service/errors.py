"""Domain errors of the audit service and their one translation into HTTP.

Every error a route can raise on purpose derives from ``ServiceError`` and
carries its HTTP status and a stable ``detail`` string (clients and tests match
on it, so it never embeds ids or paths). Kernel errors that can reach a route
(an unreadable capture store) are mapped in ``to_service_error``, the only
place that knows about them. Anything else is a bug (an unusable job database,
a full disk): ``CatchAllMiddleware`` logs it with its traceback and answers 500
with the same ``{"detail": ...}`` body.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cem.errors import CaptureStoreError, CEMError

logger = logging.getLogger(__name__)

DETAIL_UNAUTHORIZED = "missing or invalid bearer token"
DETAIL_BUNDLE_NOT_FOUND = "bundle not found"
DETAIL_AUDIT_NOT_FOUND = "audit not found"
DETAIL_AUDIT_NOT_FINISHED = "audit has no results: it has not succeeded"
DETAIL_AUDIT_FINISHED = "audit already finished: nothing to cancel"
DETAIL_CAPTURES_UNREADABLE = "capture store unreadable"
DETAIL_NOT_READY = "no audit worker is running"
DETAIL_EXPERIMENT_NOT_FOUND = "experiment not found: no folder of that name with report/table1.json under --experiments"
DETAIL_FIGURE_NOT_FOUND = "figure not found: no PNG or SVG of that name in the experiment's report folder"
DETAIL_REPORT_UNREADABLE = ("experiment report unreadable: report/table1.json is not what this version of "
                            "`cem-experiment report` writes (run `cem-experiment report DIR` again)")


class ServiceError(CEMError):
    status_code = 500
    detail = "internal error"
    headers: dict[str, str] | None = None


class UnauthorizedError(ServiceError):
    status_code = 401
    detail = DETAIL_UNAUTHORIZED
    headers = {"WWW-Authenticate": "Bearer"}


class BundleNotFoundHTTPError(ServiceError):
    status_code = 404
    detail = DETAIL_BUNDLE_NOT_FOUND


class AuditNotFoundError(ServiceError):
    status_code = 404
    detail = DETAIL_AUDIT_NOT_FOUND


class AuditNotFinishedError(ServiceError):
    status_code = 409
    detail = DETAIL_AUDIT_NOT_FINISHED


class AuditFinishedError(ServiceError):
    status_code = 409
    detail = DETAIL_AUDIT_FINISHED


class CapturesUnreadableError(ServiceError):
    status_code = 503
    detail = DETAIL_CAPTURES_UNREADABLE


class NotReadyError(ServiceError):
    status_code = 503
    detail = DETAIL_NOT_READY


class ExperimentNotFoundError(ServiceError):
    status_code = 404
    detail = DETAIL_EXPERIMENT_NOT_FOUND


class FigureNotFoundError(ServiceError):
    status_code = 404
    detail = DETAIL_FIGURE_NOT_FOUND


class ReportUnreadableError(ServiceError):
    status_code = 503
    detail = DETAIL_REPORT_UNREADABLE


def to_service_error(exc: CEMError) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, CaptureStoreError):
        return CapturesUnreadableError(str(exc))
    return ServiceError(str(exc))


async def handle_domain_error(request: Request, exc: Exception) -> JSONResponse:
    """The one handler for every domain error: status and stable detail, never a traceback."""
    error = to_service_error(exc)  # type: ignore[arg-type]
    if error.status_code >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, error.status_code, exc)
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)


class CatchAllMiddleware:
    """ASGI middleware: an exception that no handler took becomes a logged JSON 500, and stops here.

    Starlette's last resort (``ServerErrorMiddleware``, where an ``Exception`` handler
    would be installed) answers plain text, or calls that handler and then re-raises,
    so the server logs the traceback a second time. Once the response has started
    there is no 500 left to send: the exception goes on to the server, which logs it
    and drops the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watching(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        except Exception as exc:
            if started:
                raise
            logger.error("%s %s -> 500: unexpected error", scope["method"], scope["path"], exc_info=exc)
            error = ServiceError()
            await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors through ``handle_domain_error``; anything else through ``CatchAllMiddleware``.

    Call it after adding the other middleware: the last added is the outermost, so it also covers theirs.
    """
    app.add_exception_handler(CEMError, handle_domain_error)
    app.add_middleware(CatchAllMiddleware)
