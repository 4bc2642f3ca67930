"""``AuditClient`` and ``cem-audit-client`` against the running service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_helpers import TOKEN, AuditService

from attacker.client import AuditClient, AuditClientError
from attacker.client.cli import main
from attacker.service.errors import DETAIL_BUNDLE_NOT_FOUND, DETAIL_UNAUTHORIZED


def run_cli(capsys: pytest.CaptureFixture, service: AuditService, *argv: str, token: str = TOKEN) -> tuple[int, dict]:
    code = main(["--url", service.url, "--token", token, "--json", *argv])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_client_reads_results_and_maps_errors(service: AuditService, succeeded_audit: dict) -> None:
    with AuditClient(service.url, TOKEN) as client:
        assert client.health() == {"status": "ok"}
        assert [b["name"] for b in client.list_bundles()] == ["digits-tiny"]
        assert client.captures()["samples"] == 12
        audit = client.wait(succeeded_audit["id"], timeout_s=5)
        assert audit["status"] == "succeeded" and audit["metrics"]["train"]["n"] > 0
        assert client.fetch_png(audit["id"]).startswith(b"\x89PNG")
        assert "<h1>Model inversion audit</h1>" in client.fetch_report(audit["id"])
        with pytest.raises(AuditClientError) as caught:
            client.submit("no-such-bundle")
        assert (caught.value.status_code, caught.value.detail) == (404, DETAIL_BUNDLE_NOT_FOUND)
        with pytest.raises(AuditClientError, match=r"epochs: Input should be greater than or equal to 1"):
            client.submit("digits-tiny", epochs=0)
    with AuditClient(service.url, "wrong-token-0123456789") as client, pytest.raises(AuditClientError) as caught:
        client.list_audits()
    assert (caught.value.status_code, caught.value.detail) == (401, DETAIL_UNAUTHORIZED)
    with AuditClient("http://127.0.0.1:9", TOKEN, timeout_s=2) as client, pytest.raises(AuditClientError, match="cannot reach"):
        client.health()


def test_cli_status_downloads_and_errors(service: AuditService, succeeded_audit: dict, tmp_path: Path, capsys) -> None:
    audit_id = succeeded_audit["id"]
    code, result = run_cli(capsys, service, "status", audit_id)
    assert code == 0 and result["status"] == "succeeded" and result["metrics"] == succeeded_audit["metrics"]
    code, result = run_cli(capsys, service, "wait", audit_id, "--png", str(tmp_path / "g.png"), "--report", str(tmp_path / "r.html"))
    assert code == 0 and result["status"] == "succeeded"
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG") and "<img" in (tmp_path / "r.html").read_text()
    code, result = run_cli(capsys, service, "list", "--status", "succeeded")
    assert code == 0 and audit_id in [a["id"] for a in result["audits"]]
    code, result = run_cli(capsys, service, "submit", "--bundle", "nope")
    assert code == 2 and result["status_code"] == 404
    code, result = run_cli(capsys, service, "bundles", token="wrong-token-0123456789")
    assert code == 2 and result["status_code"] == 401
