"""A small synchronous client for the audit API, for scripts, the demo and ``cem-audit-client``.

    with AuditClient("http://127.0.0.1:8000", token) as client:
        audit = client.submit("sigma-cem", attack="decoder", epochs=5)
        final = client.wait(audit["id"], on_update=lambda a: print(a["progress"]))
        png = client.fetch_png(audit["id"])

Every failure surfaces as ``AuditClientError`` (HTTP status and the server's
``detail``, or a transport problem); httpx's own errors are translated in
exactly one place, ``_send``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx

from cem.errors import CEMError

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


class AuditClientError(CEMError):
    """The audit service refused a request or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


def describe_detail(detail: Any) -> str:
    """A server ``detail`` as one readable line (422 field errors become "field: message; ...")."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class AuditClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport)

    def __enter__(self) -> "AuditClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise AuditClientError(f"{method} {self.base_url}{path} timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise AuditClientError(f"cannot reach the audit service at {self.base_url}: {exc}") from exc
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = response.text[:200]
        raise AuditClientError(
            f"{method} {path} -> {response.status_code}: {describe_detail(detail)}",
            status_code=response.status_code,
            detail=detail,
        )

    def health(self) -> dict[str, Any]:
        return self._send("GET", "/healthz").json()

    def ready(self) -> dict[str, Any]:
        return self._send("GET", "/readyz").json()

    def list_bundles(self) -> list[dict[str, Any]]:
        return self._send("GET", "/v1/bundles").json()["bundles"]

    def captures(self) -> dict[str, Any]:
        return self._send("GET", "/v1/captures").json()

    def submit(
        self,
        bundle: str,
        *,
        attack: str = "decoder",
        epochs: int | None = None,
        dataset: str | None = None,
        use_captures: bool = True,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Queue an audit; returns ``{"id", "status"}``."""
        body: dict[str, Any] = {"bundle": bundle, "attack": attack, "use_captures": use_captures, "seed": seed}
        if epochs is not None:
            body["epochs"] = epochs
        if dataset is not None:
            body["dataset"] = dataset
        return self._send("POST", "/v1/audits", json=body).json()

    def get(self, audit_id: str) -> dict[str, Any]:
        return self._send("GET", f"/v1/audits/{audit_id}").json()

    def list_audits(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status
        return self._send("GET", "/v1/audits", params=params).json()["audits"]

    def cancel(self, audit_id: str) -> dict[str, Any]:
        return self._send("DELETE", f"/v1/audits/{audit_id}").json()

    def wait(
        self,
        audit_id: str,
        *,
        poll_interval_s: float = 0.5,
        timeout_s: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the audit reaches a final status; returns its last view."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            audit = self.get(audit_id)
            if on_update is not None:
                on_update(audit)
            if audit["status"] in FINAL_STATUSES:
                return audit
            if deadline is not None and time.monotonic() >= deadline:
                raise AuditClientError(f"audit {audit_id} still {audit['status']} after {timeout_s:.0f} s")
            time.sleep(poll_interval_s)

    def fetch_png(self, audit_id: str) -> bytes:
        return self._send("GET", f"/v1/audits/{audit_id}/reconstructions.png").content

    def fetch_report(self, audit_id: str) -> str:
        return self._send("GET", f"/v1/audits/{audit_id}/report").text
