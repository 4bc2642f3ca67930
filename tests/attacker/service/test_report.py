"""The HTML report shows every ξ with its kind and says in words when attackers beat it."""

from __future__ import annotations

import pytest

from attacker.attack_names import AttackName
from attacker.service.jobs import AuditStatus, Job, JobRequest
from attacker.service.report import render_report
from cem.bounds import privacy_bound, training_bound_metrics


def job_with(bound: dict | None, *, details: dict | None = None, network: tuple = (None, None)) -> Job:
    request = JobRequest(bundle="b", model_id="m", bundle_dir="/b", attack=AttackName.DECODER, epochs=1, dataset=None,
                         use_captures=False, network_channels=network[0], network_blocks=network[1])
    result = {"attack": "decoder", "metrics": {"train": {"n": 3, "mse": 0.001, "psnr": 30.0, "ssim": 0.9}},
              "bound": bound, "captured_reconstructions": 0, **({"details": details} if details is not None else {})}
    return Job(id="j", status=AuditStatus.SUCCEEDED, request=request, progress=1.0, message=None, created_at=0.0,
               started_at=1.0, finished_at=2.0, cancel_requested=False, attempts=1, worker_pid=None, lease=None,
               result=result, png_path=None, error=None)


def test_report_labels_each_kind_and_shows_the_warnings() -> None:
    metrics = {"entropy_bound": -90.0, "mse_bound_xi": 0.05, "mean_image_mse": 0.046,
               **training_bound_metrics(90.0, 64, {"entropy_x_estimate": -75.0, "mean_image_mse": 0.046,
                                                   "mean_image_mse_native": 0.04})}
    page = render_report(job_with(privacy_bound(metrics, attack_mse=0.001, attack_mse_native=0.0008)), None)
    assert "<td>estimate</td>" in page and "<td>relative</td>" in page
    assert "exceeds the model-resolution MSE an attack achieved" in page
    assert "lower bound on any attacker" not in page


def test_report_without_a_bound_or_with_a_pre_kind_result() -> None:
    assert "records no bound" in render_report(job_with(None), None)
    legacy = render_report(job_with({"xi": 0.04, "entropy_bound": -80.0}), None)
    assert "<td>relative</td>" in legacy and "not a floor" in legacy



@pytest.mark.parametrize(
    ("requested", "details", "shown"),
    [
        ((None, None), {"network": {"channels": 12, "blocks": 3}}, ("default (12)", "default (3)")),  # size used
        ((None, None), None, ("default", "default")),  # a result older than the field
        ((8, 0), {"network": {"channels": 8, "blocks": 0}}, ("8", "0")),
    ],
)
def test_report_shows_the_attack_network(requested: tuple, details: dict | None, shown: tuple[str, str]) -> None:
    page = render_report(job_with(None, details=details, network=requested), None)
    for label, value in zip(("channels", "blocks"), shown, strict=True):
        assert f"<tr><th>attack network {label}</th><td>{value}</td></tr>" in page
