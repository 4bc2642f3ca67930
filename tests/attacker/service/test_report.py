"""The HTML report shows every ξ with its kind and says in words when attackers beat it."""

from __future__ import annotations

import dataclasses

import pytest

from attacker.attack_names import AttackName
from attacker.service.jobs import AuditStatus, Job, JobRequest
from attacker.service.report import NO_NETWORK, render_report
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


def test_report_shows_the_decoders_least_steps() -> None:
    label = "<tr><th>decoder&#x27;s least optimizer steps</th><td>{}</td></tr>"
    assert label.format("default (0)") in render_report(job_with(None, details={"min_steps": 0}), None)  # as used
    assert label.format("default") in render_report(job_with(None, details={}), None)  # a result older than it
    asked = job_with(None, details={"min_steps": 5600})
    asked = dataclasses.replace(asked, request=dataclasses.replace(asked.request, min_steps=5600))
    assert label.format("5600") in render_report(asked, None)
    optimize = optimisation_job(AttackName.OPTIMIZE, steps=5, details={"network": None, "min_steps": None})
    assert label.format(NO_NETWORK) in render_report(optimize, None)  # it trains no decoder


def search_details(tv_weight: float, steps: int) -> dict:
    """What ``run_audit`` records per column for an optimisation attack (attacker.attacks.optimize)."""
    return {"tv_weight": tv_weight, "steps": steps, "restarts": 1, "lr": 0.1, "steps_per_image": steps, "sigma": 0.1,
            "val_mse_by_tv_weight": {"0.0": 0.05, str(tv_weight): 0.04}, "selection_s": 1.5}


def optimisation_job(attack: AttackName, *, steps: int | None, details: dict) -> Job:
    job = job_with(None, details=details)
    request = dataclasses.replace(job.request, attack=attack, epochs=None, optimize_steps=steps)
    return dataclasses.replace(job, request=request, result={**job.result, "attack": attack.value,
                                                             "metrics": {"train": {"n": 3, "mse": 0.0123, "psnr": 19.0,
                                                                                  "ssim": 0.5}}})


def test_report_of_the_optimize_attack_shows_tau_steps_and_times_and_no_network() -> None:
    column = {"epochs": 10, "best_epoch": 300, "still_improving": True, "attack_s": 12.34, "eval_s": 56.78,
              "optimize": search_details(3.0, 300)}
    page = render_report(optimisation_job(AttackName.OPTIMIZE, steps=None, details={"network": None, "train": column}),
                         None)
    for label in ("channels", "blocks"):
        assert f"<tr><th>attack network {label}</th><td>{NO_NETWORK}</td></tr>" in page  # not "None" or "default"
    assert "<tr><th>optimisation steps per image</th><td>default (300)</td></tr>" in page
    assert "<tr><th>epochs</th><td>none: the optimize attack optimises each image (steps below)</td></tr>" in page
    assert "<th>τ (TV weight, chosen on validation)</th><th>steps per image</th>" in page
    assert ("<tr><td>attacker&#x27;s training split</td><td>3</td><td>300</td><td>yes</td><td>12.3 s</td>"
            "<td>56.8 s</td></tr>") in page
    assert "refinement" not in page and "None" not in page


def test_report_of_the_hybrid_shows_the_decoder_alone_beside_the_refinement() -> None:
    column = {"epochs": 10, "best_epoch": 20, "still_improving": False, "attack_s": 2.0, "eval_s": 3.0,
              "optimize": {**search_details(1.0, 20), "decoder_val_mse": 0.02},
              "decoder_alone": {"mse": 0.0234, "psnr": 16.3, "ssim": 0.4, "still_improving": False}}
    job = optimisation_job(AttackName.HYBRID, steps=20, details={"network": {"channels": 8, "blocks": 1},
                                                                  "train": column})
    page = render_report(dataclasses.replace(job, request=dataclasses.replace(job.request, epochs=4)), None)
    assert "<tr><th>epochs</th><td>4 (its decoder&#x27;s)</td></tr>" in page
    assert "<tr><th>optimisation steps per image</th><td>20</td></tr>" in page
    assert "<tr><th>attack network channels</th><td>default (8)</td></tr>" in page  # its decoder's network
    assert "<td>decoder alone 0.0234 → refined 0.0123</td></tr>" in page


def test_report_of_a_learned_attack_shows_its_epochs_and_times() -> None:
    column = {"epochs": 6, "best_epoch": 5, "still_improving": False, "attack_s": 4.0, "eval_s": 0.25}
    page = render_report(job_with(None, details={"train": column}), None)
    row = "<tr><td>attacker&#x27;s training split</td><td>6</td><td>5</td><td>no</td><td>4.0 s</td><td>0.2 s</td>"
    assert row in page
    assert "optimisation steps" not in page and "τ" not in page
    assert "Attack runs" not in render_report(job_with(None, details={}), None)  # results older than the details


IDENTITY = {"attack_accuracy": 0.625, "classifier_accuracy": 0.984, "chance_accuracy": 0.1}


def with_metrics(job: Job, **columns: dict) -> Job:
    return dataclasses.replace(job, result={**job.result, "metrics": columns})


def test_report_leads_with_the_strongest_attack_and_shows_attack_accuracy() -> None:
    worst = {"train": {"attack": "decoder", "mse": 0.001, "attacks": 1},
             "captured": {"attack": "decoder", "mse": 0.0456, "attacks": 1}}
    job = with_metrics(job_with(None, details={"worst_case": worst}),
                       train={"n": 3, "mse": 0.001, "psnr": 30.0, "ssim": 0.9, **IDENTITY},
                       captured={"n": 2, "mse": 0.0456, "psnr": 13.4, "ssim": 0.2})  # unlabelled: no accuracy
    page = render_report(job, None)
    strongest, metrics = page.index("<h2>Strongest attack</h2>"), page.index("<h2>Reconstruction quality</h2>")
    assert page.index("<h1>") < strongest < metrics  # before the metrics table, after the summary
    section = page[strongest:metrics]
    assert "<tr><td>attacker&#x27;s training split</td><td>decoder</td><td>0.001</td><td>1</td></tr>" in section
    assert "<tr><td>captured traffic (ground truth known)</td><td>decoder</td><td>0.0456</td><td>1</td></tr>" in section
    assert "Only one attack was run (decoder)" in section
    assert "needs audits with the others too (gan, optimize, decoder+optimize)" in section
    assert ('<tr><td>attacker&#x27;s training split</td><td colspan="5" class="text">attack accuracy 0.62 '
            "(classifier on originals 0.98, chance 0.10)</td></tr>") in page[metrics:]
    assert page.count("attack accuracy 0.") == 1  # the captured column has no labels, so no accuracy


def test_report_of_the_hybrid_compares_it_with_its_decoder_alone() -> None:
    column = {"epochs": 10, "best_epoch": 20, "still_improving": False, "attack_s": 2.0, "eval_s": 3.0,
              "optimize": search_details(1.0, 20),
              "decoder_alone": {"mse": 0.0111, "psnr": 19.5, "ssim": 0.6, "attack_accuracy": 0.5, "epochs": 4,
                                "best_epoch": 4, "still_improving": False}}
    worst = {"train": {"attack": "decoder", "mse": 0.0111, "attacks": 2}}  # the refinement made it worse
    job = optimisation_job(AttackName.HYBRID, steps=20, details={"train": column, "worst_case": worst})
    page = render_report(with_metrics(job, train={"n": 3, "mse": 0.0123, "psnr": 19.0, "ssim": 0.5, **IDENTITY}), None)
    section = page[page.index("<h2>Strongest attack</h2>"):page.index("<h2>Reconstruction quality</h2>")]
    assert "<tr><td>attacker&#x27;s training split</td><td>decoder</td><td>0.0111</td><td>2</td></tr>" in section
    assert "compared decoder+optimize with its decoder alone" in section and "(gan, optimize)" in section
    assert "<td>decoder alone 0.0111 → refined 0.0123; attack accuracy 0.50 → 0.62</td></tr>" in page


def test_report_of_a_result_older_than_worst_case_and_attack_accuracy() -> None:
    page = render_report(job_with(None, details={"network": {"channels": 8, "blocks": 1}}), None)
    assert page.index("<h2>Strongest attack</h2>") < page.index("<h2>Reconstruction quality</h2>")
    assert "recorded before audits named their strongest attack" in page
    assert "attack accuracy" not in page.lower() and "None" not in page
    assert "<tr><td>attacker&#x27;s training split</td><td>3</td><td>0.001</td>" in page  # the metrics as before


def test_report_escapes_the_worst_case() -> None:
    worst = {"train": {"attack": "<script>x</script>", "mse": 0.5, "attacks": 1}}
    page = render_report(job_with(None, details={"worst_case": worst}), None)
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
