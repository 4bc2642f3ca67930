"""Relaying one call faithfully: the caller's metadata and deadline up, the upstream's status down.

Kept apart from the proxy's routing so the fidelity rules (what metadata is
forwarded, how a deadline is carried, how a failure is relayed unmasked) have
one home and one set of tests (tests/attacker/tap/test_tap_proxy.py).
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

_NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as a huge time_remaining()
# Headers the transport sets itself on the upstream call; forwarding them would duplicate or clash.
_TRANSPORT_HEADERS = ("user-agent", "te", "content-type", "grpc-", ":")
_MASKED_STATUS_DETAILS = "Internal error from Core"  # what grpc.aio reports for a failed write
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}  # core's int -> StatusCode


def forwardable_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    """The caller's metadata minus what the upstream transport sets itself."""
    return tuple(
        (key, value) for key, value in (context.invocation_metadata() or ()) if not key.startswith(_TRANSPORT_HEADERS)
    )


def remaining_timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline, as a timeout for the upstream call (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_S else max(0.0, remaining)


async def relay_failure(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, sent_metadata: bool) -> None:
    """End the caller's RPC with exactly the upstream status, details and metadata."""
    if not sent_metadata and error.initial_metadata():
        await context.send_initial_metadata(tuple(error.initial_metadata()))
    await context.abort(error.code(), error.details() or "", trailing_metadata=tuple(error.trailing_metadata() or ()))


class FirstStatus:
    """The first final status grpc.aio reports for an upstream call, kept before anything can mask it.

    A write that races the upstream's final status fails in the core, and
    grpc.aio then *replaces* the status it has already received with INTERNAL
    "Internal error from Core" (``_AioCall.set_internal_error``). Relaying that
    turned 20-50 % of upstream errors on streams (and on unknown methods, which
    are proxied as streams) into INTERNAL. A done callback runs on the first
    status only, so it sees the upstream's real one. grpc.aio has no public,
    synchronous accessor for it, hence the guarded read of ``_cython_call._status``;
    if a grpc release removes it, this falls back to the masked status (and
    tests/attacker/tap/test_tap_proxy.py catches that). Unary methods need none of
    this: they go upstream as unary calls, which send their one message in the
    same batch that starts the call, so no write can race the status.
    """

    def __init__(self, call: grpc.aio.Call) -> None:
        self._status: Any = None  # grpc's private status object (code(), details(), trailing_metadata())
        call.add_done_callback(self._remember)

    def _remember(self, call: grpc.aio.Call) -> None:
        if self._status is None:
            self._status = getattr(getattr(call, "_cython_call", None), "_status", None)

    def unmask(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError | None:
        """``error``, or the upstream's real failure when ``error`` is the masking INTERNAL.

        None when the upstream in fact ended the call OK (a caller sent a unary method a
        second message: the cloud answered and closed, and the tap's write of the extra
        message masked that OK as INTERNAL in 0.1-0.4 % of such calls).
        """
        status = self._status
        masked = error.code() == grpc.StatusCode.INTERNAL and error.details() == _MASKED_STATUS_DETAILS
        if not masked or status is None or status.code() == grpc.StatusCode.INTERNAL:
            return error
        code = _STATUS_CODES.get(status.code())
        if code is None:
            return error
        if code == grpc.StatusCode.OK:
            return None
        return grpc.aio.AioRpcError(
            code,
            error.initial_metadata(),
            grpc.aio.Metadata(*status.trailing_metadata() or ()),
            details=status.details(),
        )
