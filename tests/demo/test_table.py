"""The demo's table flags an attack that was still improving when it stopped."""

from __future__ import annotations

from demo.table import convergence_lines, render_table


def test_an_attack_still_improving_is_flagged_and_a_missing_one_is_a_dash() -> None:
    models = [
        {"name": "sigma-only", "training": {"decoder": {
            "train": {"epochs": 12, "best_epoch": 12, "still_improving": True},
            "infer": {"epochs": 12, "best_epoch": 7, "still_improving": False}}}},
        {"name": "sigma-cem"},
    ]
    lines = convergence_lines(models, ["decoder"])
    assert "  sigma-only/decoder: train 12/12 STILL IMPROVING (stopped early), infer 7/12" in lines
    assert "  sigma-cem/decoder: —" in lines


def test_a_column_without_captured_traffic_shows_a_dash() -> None:
    """The service reports ``captured: null`` when the tap saw nothing of a model."""
    metrics = {"train": {"mse": 0.01, "psnr": 20.0, "ssim": 0.5}, "infer": {"mse": 0.02, "psnr": 17.0, "ssim": 0.4},
               "captured": None}
    models = [{"name": name, "accuracy": 0.9, "audits": {"decoder": metrics}} for name in ("sigma-only", "sigma-cem")]
    table = render_table(models, ["decoder"])
    assert table.splitlines()[2].split()[-7:] == ["0.02000", "17.00", "0.400", "—", "—", "—", "—"]
    assert "captured —%" in table


def test_the_worst_case_and_attack_accuracy_lines() -> None:
    def audit(train: float, infer: float, accuracy: float) -> dict:
        return {"train": {"mse": train, "attack_accuracy": accuracy, "classifier_accuracy": 0.98,
                          "chance_accuracy": 0.1}, "infer": {"mse": infer}, "captured": None}

    models = [{"name": "sigma-only", "audits": {"decoder": audit(0.002, 0.004, 0.9),
                                                "decoder+optimize": audit(0.001, 0.005, 0.95)}},
              {"name": "sigma-cem", "audits": {"decoder": audit(0.003, 0.006, 0.5),
                                               "decoder+optimize": audit(0.004, 0.008, 0.4)}}]
    lines = render_table(models, ["decoder", "decoder+optimize"]).splitlines()
    assert "  sigma-only: train decoder+optimize 0.00100, infer decoder 0.00400" in lines
    assert "  sigma-cem: train decoder 0.00300, infer decoder 0.00600" in lines
    assert "  CEM gain against the worst case: train +200.0%, infer +50.0%" in lines
    assert "  sigma-cem/decoder: train 0.500 (0.980, 0.10), infer — (—, —)" in lines
    assert lines[2].split()[1] == "decoder" and lines[3].split()[1] == "decoder+optimize"
