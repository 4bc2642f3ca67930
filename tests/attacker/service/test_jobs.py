"""Audit jobs end to end: a worker process runs the real attack; results, cancellation, and what is logged."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image
from service_helpers import (
    CAPTURED_SAMPLES,
    SUCCEEDED_AUDIT_MIN_STEPS,
    SUCCEEDED_AUDIT_NETWORK,
    TOKEN,
    AuditService,
    wait_status,
)

from attacker.attack_names import AttackName
from attacker.attacks.optimize import TV_WEIGHTS
from attacker.client import AuditClient
from attacker.service.errors import DETAIL_AUDIT_FINISHED, DETAIL_AUDIT_NOT_FINISHED
from attacker.service.report import NO_NETWORK
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
        assert 0 <= metrics[split]["attack_accuracy"] <= 1 and 0 < metrics[split]["classifier_accuracy"] <= 1
        assert metrics[split]["chance_accuracy"] == 0.1  # digits: ten classes
    assert metrics["captured"]["attack_accuracy"] is None  # captures carry no labels
    # one attack ran: per column its own MSE is the worst case, and the view says so
    assert audit["worst_case"] == {column: {"attack": "decoder", "mse": metrics[column]["mse"], "attacks": 1}
                                   for column in ("train", "infer", "captured")}
    assert metrics["captured"]["n"] == CAPTURED_SAMPLES  # every capture carried a known test-split id
    assert audit["captured_reconstructions"] == CAPTURED_SAMPLES
    assert audit["bound"] is None  # the fixture bundle records no entropy bound
    for column in ("train", "infer"):  # one epoch: the kept weights are epoch 1's, with nothing to judge progress by
        training = audit["training"][column]
        assert training["attack_s"] > 0 and training["eval_s"] > 0  # wall times, whatever they were
        assert 0 < training["classifier_val_accuracy"] <= 1  # the evaluation classifier on the attacker's images
        assert {key: value for key, value in training.items() if not key.endswith(("_s", "_accuracy"))} == {
            "epochs": 1, "best_epoch": 1, "still_improving": False,
            "doubling_gain": None,  # one epoch: no half budget to run
            "optimize": None, "decoder_alone": None,  # the optimisation attacks' records
            "resumed_epochs": 0, "pretraining_cached": False,  # nothing was carried over from an earlier run
        }
    audit_id = audit["id"]
    # the attack network asked for by AuditClient.submit: echoed, stored with the job, and the one that was trained
    network = SUCCEEDED_AUDIT_NETWORK
    assert (audit["network_channels"], audit["network_blocks"]) == (network["channels"], network["blocks"])
    row = service.job_row(audit_id)
    assert (row["network_channels"], row["network_blocks"]) == (network["channels"], network["blocks"])
    stored = json.loads(row["result"])["details"]
    assert stored["network"] == network and stored["worst_case"] == audit["worst_case"]
    # the decoder's least steps: echoed, stored, handed to the attack and recorded with its result
    assert audit["min_steps"] == row["min_steps"] == stored["min_steps"] == SUCCEEDED_AUDIT_MIN_STEPS
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
        assert f"<tr><th>decoder&#x27;s least optimizer steps</th><td>{SUCCEEDED_AUDIT_MIN_STEPS}</td></tr>" in html
        assert "<h2>Attack runs</h2>" in html and "<tr><td>held-out inference split</td><td>1</td><td>1</td>" in html
        assert "optimisation steps" not in html
        strongest, table = html.index("<h2>Strongest attack</h2>"), html.index("<h2>Reconstruction quality</h2>")
        assert strongest < table  # the report leads with the worst case
        for column, label in (("train", "attacker&#x27;s training split"), ("infer", "held-out inference split")):
            assert f"<tr><td>{label}</td><td>decoder</td><td>{metrics[column]['mse']:.4g}</td><td>1</td></tr>" in html
            values = metrics[column]
            assert (f'<tr><td>{label}</td><td colspan="5" class="text">attack accuracy {values["attack_accuracy"]:.2f} '
                    f"(classifier on originals {values['classifier_accuracy']:.2f}, chance 0.10)</td></tr>") in html
        assert "Only one attack was run (decoder)" in html[strongest:table]

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


FINAL = {"succeeded", "failed", "cancelled", "interrupted"}


def test_optimize_audit_has_no_network_and_reports_its_tv_weight(service: AuditService) -> None:
    """The optimisation attack through the whole service: submitted by AuditClient with a small step budget."""
    with AuditClient(service.url, TOKEN) as client:
        audit_id = client.submit("digits-tiny", attack=AttackName.OPTIMIZE, optimize_steps=5, seed=1).id
    with service.client() as http:
        audit = wait_status(http, audit_id, FINAL)
        assert audit["status"] == "succeeded", audit["error"]
        assert (audit["attack"], audit["optimize_steps"], audit["epochs"]) == ("optimize", 5, None)
        assert audit["network_channels"] is None and audit["network_blocks"] is None
        for split in ("train", "infer"):
            assert audit["metrics"][split]["n"] > 0 and 0 < audit["metrics"][split]["mse"] < 1
        assert audit["metrics"]["captured"]["n"] == CAPTURED_SAMPLES  # captures are optimised too
        row = service.job_row(audit_id)
        assert (row["attack"], row["optimize_steps"], row["epochs"]) == ("optimize", 5, None)
        details = json.loads(row["result"])["details"]
        assert details["network"] is None  # no decoding network
        assert {column: worst["attack"] for column, worst in audit["worst_case"].items()} == dict.fromkeys(
            ("train", "infer", "captured"), "optimize")
        for column in ("train", "infer"):
            training, search = audit["training"][column], details[column]["optimize"]
            assert search["tv_weight"] in TV_WEIGHTS and search["steps"] == search["steps_per_image"] == 5
            assert set(search["val_mse_by_tv_weight"]) == {str(tv) for tv in TV_WEIGHTS}  # every τ was tried
            assert training["optimize"] == {**search, "decoder_val_mse": None}  # the view carries the record
            assert (training["epochs"], training["best_epoch"]) == (5, 5)  # an optimisation's epochs: its steps
            assert training["attack_s"] > 0 and training["eval_s"] > 0 and training["decoder_alone"] is None

        report = http.get(f"/v1/audits/{audit_id}/report")
        assert report.status_code == 200
        html = report.text
        for label in ("channels", "blocks"):
            assert f"<tr><th>attack network {label}</th><td>{NO_NETWORK}</td></tr>" in html
        assert "<tr><th>optimisation steps per image</th><td>5</td></tr>" in html
        assert "τ (TV weight, chosen on validation)" in html
        for column, label in (("train", "attacker&#x27;s training split"), ("infer", "held-out inference split")):
            recorded = details[column]
            cells = [label, f"{recorded['optimize']['tv_weight']:.4g}", "5",
                     "yes" if recorded["still_improving"] else "no",
                     *(f"{recorded[key]:.1f} s" for key in ("attack_s", "eval_s"))]
            assert "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" in html


def test_cancel_in_the_middle_of_an_optimisation(service: AuditService) -> None:
    """The inverter polls for cancellation at every step: a cancelled optimisation stops within its first τ."""
    steps = 1000
    with service.client() as http:
        accepted = http.post("/v1/audits", json={"bundle": "digits-tiny", "attack": "optimize",
                                                 "optimize_steps": steps, "use_captures": False})
        assert accepted.status_code == 202
        audit_id = accepted.json()["id"]
        running = wait_status(http, audit_id, {"running"}, min_progress=0.06)  # after the classifier: τ = 0 under way
        assert running["message"].startswith("optimize τ=0: images ")
        stopping = http.delete(f"/v1/audits/{audit_id}")
        assert (stopping.status_code, stopping.json()["status"]) == (202, "running")
        audit = wait_status(http, audit_id, FINAL, timeout_s=30)  # seconds, not the minutes the τ trial takes
        assert audit["status"] == "cancelled" and audit["error"] is None
        step = int(re.fullmatch(r"optimize τ=0: images \d+-\d+ of \d+, step (\d+)/1000", audit["message"]).group(1))
        assert step < steps  # it stopped inside the first τ's optimisation, not after it
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
