"""A small synchronous client for the audit API, for scripts, the demo and ``cem-audit-client``.

    with AuditClient("http://127.0.0.1:8000", token) as client:
        audit = client.submit("sigma-cem", attack=AttackName.DECODER, epochs=5)
        final = client.wait(audit.id, on_update=lambda a: print(a.progress))
        final.worst_case.infer.attack, final.worst_case.infer.mse   # the strongest attack this audit ran
        final.metrics.infer.attack_accuracy                          # identity leakage (None in older results)
        png = client.fetch_png(audit.id)

Answers come back as the API's own response models (``AuditView`` and the
rest of ``attacker.service.api.schemas``), validated on arrival. Every failure
surfaces as ``AuditClientError`` (HTTP status and the server's ``detail``, or a
transport problem); httpx's own errors are translated in exactly one place,
``_send``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from attacker.attack_names import AttackName
from attacker.service.api.schemas import (
    AuditAccepted,
    AuditList,
    AuditView,
    BundleList,
    BundleView,
    CaptureSummaryView,
    Health,
    Readiness,
)
from attacker.service.api.token_env import TOKEN_ENV as TOKEN_ENV  # re-exported for callers
from attacker.service.jobs import FINAL_STATUSES, AuditStatus
from cem.errors import CEMError

# Where a caller finds the service unless told otherwise (cem-audit-client, cem-demo-report); the token is read from
# the variable the service reads it from (TOKEN_ENV, re-exported here).
URL_ENV = "CEM_AUDIT_URL"

ModelT = TypeVar("ModelT", bound=BaseModel)


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

    def __enter__(self) -> AuditClient:
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

    def _receive(self, model: type[ModelT], method: str, path: str, **kwargs: Any) -> ModelT:
        """``_send``, then the answer as ``model``; an answer that does not fit it is an ``AuditClientError`` too."""
        response = self._send(method, path, **kwargs)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            problems = describe_detail(exc.errors(include_url=False, include_input=False))
            raise AuditClientError(f"{method} {path}: expected a {model.__name__} body, got {problems}") from exc

    def health(self) -> Health:
        return self._receive(Health, "GET", "/healthz")

    def ready(self) -> Readiness:
        return self._receive(Readiness, "GET", "/readyz")

    def list_bundles(self) -> list[BundleView]:
        return self._receive(BundleList, "GET", "/v1/bundles").bundles

    def captures(self) -> CaptureSummaryView:
        return self._receive(CaptureSummaryView, "GET", "/v1/captures")

    def submit(
        self,
        bundle: str,
        *,
        attack: AttackName = AttackName.DECODER,
        epochs: int | None = None,
        dataset: str | None = None,
        use_captures: bool = True,
        seed: int = 0,
        network_channels: int | None = None,
        network_blocks: int | None = None,
        optimize_steps: int | None = None,
        min_steps: int | None = None,
    ) -> AuditAccepted:
        """Queue an audit; returns its id and status (queued).

        ``network_channels``/``network_blocks`` size the attacker's decoding network (None: the paper's);
        ``optimize_steps``: the optimisation attacks' steps per image (None: their default); ``min_steps``: the
        decoder's least optimizer steps, its epochs raised to reach them (None: its default). The service refuses
        (422) epochs for ``optimize``, a network size or ``min_steps`` for ``optimize`` and steps for
        ``decoder``/``gan``."""
        body: dict[str, Any] = {"bundle": bundle, "attack": attack, "use_captures": use_captures, "seed": seed}
        optional = {"epochs": epochs, "network_channels": network_channels, "network_blocks": network_blocks,
                    "optimize_steps": optimize_steps, "min_steps": min_steps}
        body.update({name: value for name, value in optional.items() if value is not None})
        if dataset is not None:
            body["dataset"] = dataset
        return self._receive(AuditAccepted, "POST", "/v1/audits", json=body)

    def get(self, audit_id: str) -> AuditView:
        return self._receive(AuditView, "GET", f"/v1/audits/{audit_id}")

    def list_audits(self, status: AuditStatus | None = None, limit: int = 100) -> list[AuditView]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status
        return self._receive(AuditList, "GET", "/v1/audits", params=params).audits

    def cancel(self, audit_id: str) -> AuditAccepted:
        return self._receive(AuditAccepted, "DELETE", f"/v1/audits/{audit_id}")

    def wait(
        self,
        audit_id: str,
        *,
        poll_interval_s: float = 0.5,
        timeout_s: float | None = None,
        on_update: Callable[[AuditView], None] | None = None,
    ) -> AuditView:
        """Poll until the audit reaches a final status; returns its last view."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            audit = self.get(audit_id)
            if on_update is not None:
                on_update(audit)
            if audit.status in FINAL_STATUSES:
                return audit
            if deadline is not None and time.monotonic() >= deadline:
                raise AuditClientError(f"audit {audit_id} still {audit.status} after {timeout_s:.0f} s")
            time.sleep(poll_interval_s)

    def fetch_png(self, audit_id: str) -> bytes:
        return self._send("GET", f"/v1/audits/{audit_id}/reconstructions.png").content

    def fetch_report(self, audit_id: str) -> str:
        return self._send("GET", f"/v1/audits/{audit_id}/report").text
