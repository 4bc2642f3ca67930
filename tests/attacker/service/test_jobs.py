"""Audit jobs end to end: a worker process runs the real attack; results, cancellation, and what is logged."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image
from service_helpers import CAPTURED_SAMPLES, SUCCEEDED_AUDIT_NETWORK, AuditService, wait_status

from attacker.service.errors import DETAIL_AUDIT_FINISHED, DETAIL_AUDIT_NOT_FINISHED
from cem.captures.reader import CaptureStore

pytestmark = pytest.mark.e2e  # jobs run by worker processes of a running cem-audit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_lifecycle_to_succeeded_with_metrics_png_and_report(service: AuditService, succeeded_audit: dict) -> None:
    audit = succeeded_audit
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["progress"] == 1.0 and audit["error"] is None and audit["epochs"] == 1 and audit["attack"] == "decoder"
    assert audit["created_at"] <= audit["started_at"] <= audit["finished_at"]
    metrics = audit["metrics"]
    for split in ("train", "infer"):
        assert metrics[split]["n"] > 0 and 0 < metrics[split]["mse"] < 1 and metrics[split]["psnr"] > 0
        assert -1 <= metrics[split]["ssim_ref"] <= 1  # the paper's SSIM travels through the API schema
    assert metrics["captured"]["n"] == CAPTURED_SAMPLES  # every capture carried a known test-split id
    assert audit["captured_reconstructions"] == CAPTURED_SAMPLES
    assert audit["bound"] is None  # the fixture bundle records no entropy bound
    for column in ("train", "infer"):  # one epoch: the kept weights are epoch 1's, with nothing to judge progress by
        assert audit["training"][column] == {"epochs": 1, "best_epoch": 1, "still_improving": False,
                                             "doubling_gain": None}  # one epoch: no half budget to run
    audit_id = audit["id"]
    # the attack network asked for by AuditClient.submit: echoed, stored with the job, and the one that was trained
    network = SUCCEEDED_AUDIT_NETWORK
    assert (audit["network_channels"], audit["network_blocks"]) == (network["channels"], network["blocks"])
    row = service.job_row(audit_id)
    assert (row["network_channels"], row["network_blocks"]) == (network["channels"], network["blocks"])
    assert json.loads(row["result"])["details"]["network"] == network
    with service.client() as http:
        png = http.get(f"/v1/audits/{audit_id}/reconstructions.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(PNG_SIGNATURE)
        image = Image.open(io.BytesIO(png.content))
        image.verify()
        assert image.size[0] > image.size[1] > 32

        report = http.get(f"/v1/audits/{audit_id}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        html = report.text
        assert f"{metrics['train']['mse']:.4g}" in html and "captured traffic" in html
        assert "SSIM (reference, zero-padded)" in html and f"{metrics['train']['ssim_ref']:.4g}" in html
        assert f"data:image/png;base64,{base64.b64encode(png.content).decode()}" in html
        for label, value in (("channels", network["channels"]), ("blocks", network["blocks"])):
            assert f"<tr><th>attack network {label}</th><td>{value}</td></tr>" in html

        listed = http.get("/v1/audits", params={"status": "succeeded"}).json()["audits"]
        assert audit_id in [a["id"] for a in listed]
        finished = http.delete(f"/v1/audits/{audit_id}")
        assert (finished.status_code, finished.json()) == (409, {"detail": DETAIL_AUDIT_FINISHED})


def test_cancel_queued_and_running_audits(service: AuditService) -> None:
    with service.client() as http:
        accepted = http.post("/v1/audits", json={"bundle": "digits-tiny", "epochs": 500, "use_captures": False})
        assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
        long_id = accepted.json()["id"]
        assert accepted.headers["location"] == f"/v1/audits/{long_id}"
        for suffix in ("/report", "/reconstructions.png"):
            early = http.get(f"/v1/audits/{long_id}{suffix}")
            assert (early.status_code, early.json()) == (409, {"detail": DETAIL_AUDIT_NOT_FINISHED})
        queued_id = http.post("/v1/audits", json={"bundle": "digits-tiny", "epochs": 1}).json()["id"]

        wait_status(http, long_id, {"running"}, min_progress=0.02)  # training has started
        cancelled = http.delete(f"/v1/audits/{queued_id}")  # one worker, busy: this one is still queued
        assert (cancelled.status_code, cancelled.json()) == (202, {"id": queued_id, "status": "cancelled"})

        stopping = http.delete(f"/v1/audits/{long_id}")
        assert (stopping.status_code, stopping.json()["status"]) == (202, "running")
        assert http.get(f"/v1/audits/{long_id}").json()["cancel_requested"] is True
        audit = wait_status(http, long_id, {"cancelled", "succeeded", "failed"}, timeout_s=60)
        assert audit["status"] == "cancelled" and audit["progress"] < 0.5
        assert http.get(f"/v1/audits/{queued_id}").json()["status"] == "cancelled"  # never ran
        assert http.get("/readyz").json()["running"] == 0


def test_neither_features_nor_images_are_logged(service: AuditService, succeeded_audit: dict, captures_dir) -> None:
    with service.client() as http:
        png = http.get(f"/v1/audits/{succeeded_audit['id']}/reconstructions.png").content
    log = service.log()
    assert "audit" in log and succeeded_audit["id"] in log  # it does log: ids, sizes, timings
    features = CaptureStore(captures_dir).load(succeeded_audit["model_id"]).features
    values = features.flatten()[:20].tolist()
    forbidden = [
        "tensor(", "\\x89PNG", "PNG\r\n\x1a", "iVBORw0KGgo",  # tensor reprs, raw, escaped or base64 PNG
        base64.b64encode(png[:48]).decode(), png[8:40].hex(),
        base64.b64encode(features.flatten()[:8].numpy().tobytes()).decode(),
        *[f"{v:.6f}" for v in values], *[repr(v) for v in values],
    ]
    leaked = [token for token in forbidden if token in log]
    assert not leaked, f"the service log contains private data: {leaked[:3]}"
