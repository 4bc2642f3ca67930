"""``AuditClient`` and ``cem-audit-client`` against the running service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_helpers import TOKEN, AuditService

from attacker.client import AuditClient, AuditClientError
from attacker.client.cli import main
from attacker.service.api.schemas import Health
from attacker.service.errors import DETAIL_BUNDLE_NOT_FOUND, DETAIL_UNAUTHORIZED
from attacker.service.jobs import AuditStatus


def run_cli(capsys: pytest.CaptureFixture, service: AuditService, *argv: str, token: str = TOKEN) -> tuple[int, dict]:
    code = main(["--url", service.url, "--token", token, "--json", *argv])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.e2e  # a real audit job through cem-audit and its worker
def test_client_reads_results_and_maps_errors(service: AuditService, succeeded_audit: dict) -> None:
    with AuditClient(service.url, TOKEN) as client:
        assert client.health() == Health(status="ok")
        assert [b.name for b in client.list_bundles()] == ["digits-tiny"]
        assert client.captures().samples == 12
        audit = client.wait(succeeded_audit["id"], timeout_s=5)
        assert audit.status is AuditStatus.SUCCEEDED and audit.metrics is not None and audit.metrics.train.n > 0
        assert audit.model_dump(mode="json") == succeeded_audit  # the typed view loses nothing the service sent
        assert audit.id in [a.id for a in client.list_audits(AuditStatus.SUCCEEDED)]
        assert client.fetch_png(audit.id).startswith(b"\x89PNG")
        assert "<h1>Model inversion audit</h1>" in client.fetch_report(audit.id)
        with pytest.raises(AuditClientError) as caught:
            client.submit("no-such-bundle")
        assert (caught.value.status_code, caught.value.detail) == (404, DETAIL_BUNDLE_NOT_FOUND)
        with pytest.raises(AuditClientError, match=r"epochs: Input should be greater than or equal to 1"):
            client.submit("digits-tiny", epochs=0)
        with pytest.raises(AuditClientError, match=r"network_channels: Input should be greater than or equal to 1"):
            client.submit("digits-tiny", network_channels=0)
        with pytest.raises(AuditClientError, match=r"network_blocks: Input should be less than or equal to 32"):
            client.submit("digits-tiny", network_blocks=33)
    with AuditClient(service.url, "wrong-token-0123456789") as client, pytest.raises(AuditClientError) as caught:
        client.list_audits()
    assert (caught.value.status_code, caught.value.detail) == (401, DETAIL_UNAUTHORIZED)
    with AuditClient("http://127.0.0.1:9", TOKEN, timeout_s=2) as client, \
            pytest.raises(AuditClientError, match="cannot reach"):
        client.health()


def test_the_client_starts_without_torch() -> None:
    """``cem-audit-client`` shares the API's models, not the attack code: no torch import on each call."""
    script = "import sys, attacker.client.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 0


def test_answers_that_do_not_fit_their_model_are_client_errors() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "dead"}))
    message = r"GET /healthz: expected a Health body, got status: Input should be 'ok'"
    with AuditClient("http://audit.invalid", TOKEN, transport=transport) as client, \
            pytest.raises(AuditClientError, match=message):
        client.health()


@pytest.mark.e2e  # a real audit job through cem-audit and its worker
def test_cli_status_downloads_and_errors(service: AuditService, succeeded_audit: dict, tmp_path: Path, capsys) -> None:
    audit_id = succeeded_audit["id"]
    code, result = run_cli(capsys, service, "status", audit_id)
    assert code == 0 and json.dumps(result) == json.dumps(succeeded_audit)  # the service's JSON, key order included
    code, result = run_cli(capsys, service, "wait", audit_id, "--png", str(tmp_path / "g.png"),
                           "--report", str(tmp_path / "r.html"))
    assert code == 0 and result["status"] == "succeeded"
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG") and "<img" in (tmp_path / "r.html").read_text()
    code, result = run_cli(capsys, service, "list", "--status", "succeeded")
    assert code == 0 and audit_id in [a["id"] for a in result["audits"]]
    code, result = run_cli(capsys, service, "submit", "--bundle", "nope")
    assert code == 2 and result["status_code"] == 404
    for option, field in (("--network-channels", "network_channels"), ("--network-blocks", "network_blocks")):
        code, result = run_cli(capsys, service, "submit", "--bundle", "digits-tiny", option, "999")
        assert code == 2 and result["status_code"] == 422 and field in result["error"]  # sent, and refused
    code, result = run_cli(capsys, service, "bundles", token="wrong-token-0123456789")
    assert code == 2 and result["status_code"] == 401
