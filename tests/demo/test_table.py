"""The demo's table flags an attack that was still improving when it stopped."""

from __future__ import annotations

from demo.table import convergence_lines


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
