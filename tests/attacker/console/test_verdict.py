"""The console's verdict on its own: each level at and around its thresholds, the strongest attack chosen per
column, pydantic inputs, and results that lack metrics."""

from __future__ import annotations

from typing import Any

import pytest

from attacker.service.api.schemas import AuditMetrics, WorstCaseByColumn
from attacker.service.console.verdict import (
    LEAK_IDENTITY,
    LEAK_PSNR_DB,
    LEAK_SSIM,
    RULE,
    SAFE_IDENTITY,
    SAFE_PSNR_DB,
    SAFE_SSIM,
    identity_ratio,
    verdict,
)

CHANCE, CLASSIFIER = 0.1, 0.9


def scores(psnr: float | None, ssim: float | None, ratio: float | None = None, n: int = 50) -> dict[str, Any]:
    """A column's metrics; ``ratio`` sets the attack accuracy so that the identity ratio is exactly it."""
    values: dict[str, Any] = {"n": n, "mse": 10 ** (-(psnr or 10) / 10), "psnr": psnr, "ssim": ssim}
    if ratio is not None:
        values.update(attack_accuracy=CHANCE + ratio * (CLASSIFIER - CHANCE), classifier_accuracy=CLASSIFIER,
                      chance_accuracy=CHANCE)
    return values


def test_thresholds_are_ordered_and_stated_in_the_rule() -> None:
    assert SAFE_PSNR_DB < LEAK_PSNR_DB and SAFE_SSIM < LEAK_SSIM and SAFE_IDENTITY < LEAK_IDENTITY
    for value in (f"PSNR ≥ {LEAK_PSNR_DB:g} dB", f"SSIM ≥ {LEAK_SSIM:g}", f"identity ratio ≥ {LEAK_IDENTITY:g}",
                  f"PSNR < {SAFE_PSNR_DB:g} dB", f"SSIM < {SAFE_SSIM:g}", f"identity ratio < {SAFE_IDENTITY:g}"):
        assert value in RULE


def test_identity_ratio() -> None:
    assert identity_ratio(0.9, 0.9, 0.1) == pytest.approx(1.0)  # as much as the originals
    assert identity_ratio(0.1, 0.9, 0.1) == pytest.approx(0.0)  # chance
    assert identity_ratio(0.5, 0.9, 0.1) == pytest.approx(0.5)
    assert identity_ratio(None, 0.9, 0.1) is None
    assert identity_ratio(0.5, 0.1, 0.1) is None  # a classifier at chance: the ratio is undefined


@pytest.mark.parametrize(("column", "psnr", "ssim", "ratio"), [
    ("infer", LEAK_PSNR_DB, 0.1, 0.0),  # PSNR alone, at the threshold
    ("infer", 28.0, 0.9, 0.95),  # the undefended digits model: near copies
    ("train", 12.0, LEAK_SSIM, 0.0),  # SSIM alone
    ("infer", 12.0, 0.1, LEAK_IDENTITY + 1e-9),  # identity alone: blurry images that still give the class away
    ("captured", 21.0, 0.1, None),  # the captured traffic counts too
])
def test_any_column_crossing_any_leak_threshold_leaks(column: str, psnr: float, ssim: float,
                                                      ratio: float | None) -> None:
    metrics = {"train": scores(12.0, 0.1, 0.0), "infer": scores(12.0, 0.1, 0.0), "captured": scores(12.0, 0.1)}
    metrics[column] = scores(psnr, ssim, ratio)
    result = verdict(metrics, attack="decoder")
    assert result.level == "leaks" and result.headline.startswith("Leaks")
    leaking = [e for e in result.evidence if e.level == "leaks"]
    assert [e.column for e in leaking] == [column]
    labels = tuple(e.label for e in result.evidence)
    assert [r for r in result.reasons if r.startswith(labels)] == [result.reasons[0]]  # the leaking column alone
    assert result.reasons[0].startswith(leaking[0].label)
    assert result.rule == RULE


def test_all_columns_below_every_safe_threshold_is_protected() -> None:
    metrics = {"train": scores(13.0, 0.2, 0.1), "infer": scores(14.9, 0.29, SAFE_IDENTITY - 0.01),
               "captured": scores(12.0, 0.1)}
    worst = {column: {"attack": "decoder", "mse": metrics[column]["mse"], "attacks": 1} for column in metrics}
    result = verdict(metrics, worst)
    assert result.level == "protected" and result.headline.startswith("Protected")
    assert {e.level for e in result.evidence} == {"protected"}
    infer = next(e for e in result.evidence if e.column == "infer")
    assert infer.psnr == 14.9 and infer.ssim == 0.29 and infer.identity_ratio == pytest.approx(0.19)
    assert infer.findings == ("PSNR 14.9 dB < 15 dB", "SSIM 0.29 < 0.3", "identity ratio 0.19 < 0.2")
    # one attack ran: the verdict says it holds against that attack only
    assert any("Only one attack was run" in reason for reason in result.reasons)


@pytest.mark.parametrize(("psnr", "ssim", "ratio"), [
    (SAFE_PSNR_DB, 0.1, 0.0),  # at the safe PSNR: no longer below it
    (17.0, 0.1, 0.0),
    (12.0, SAFE_SSIM, 0.0),
    (12.0, 0.1, SAFE_IDENTITY + 1e-9),  # (an exact 0.2 is not exact in binary)
    (19.9, 0.49, 0.49),  # just under every leak threshold
])
def test_in_between_is_partial(psnr: float, ssim: float, ratio: float) -> None:
    result = verdict({"train": scores(12.0, 0.1, 0.0), "infer": scores(psnr, ssim, ratio)})
    assert result.level == "partial" and result.headline.startswith("Partial")
    assert [e.level for e in result.evidence] == ["protected", "partial"]
    assert any("between" in finding for finding in result.evidence[1].findings)


def test_judged_on_the_strongest_attack_of_each_column() -> None:
    """The hybrid's own scores are protected, but its decoder alone (the strongest on train) leaks."""
    metrics = {"train": scores(12.0, 0.1, 0.0), "infer": scores(12.0, 0.1, 0.0)}
    decoder_alone = {"train": {"mse": 0.005, "psnr": 23.0, "ssim": 0.2, "attack_accuracy": 0.2},
                     "infer": {"mse": 0.2, "psnr": 7.0, "ssim": 0.0, "attack_accuracy": 0.1}}
    worst = {"train": {"attack": "decoder", "mse": 0.005, "attacks": 2},
             "infer": {"attack": "decoder+optimize", "mse": metrics["infer"]["mse"], "attacks": 2}}
    result = verdict(metrics, worst, {"decoder": decoder_alone}, attack="decoder+optimize")
    assert result.level == "leaks"
    train, infer = result.evidence
    assert (train.attack, train.psnr, train.mse) == ("decoder", 23.0, 0.005)
    assert train.classifier_accuracy == CLASSIFIER  # the column's classifier and chance are kept
    assert train.identity_ratio == pytest.approx((0.2 - CHANCE) / (CLASSIFIER - CHANCE))
    assert (infer.attack, infer.psnr) == ("decoder+optimize", 12.0)  # the hybrid itself was strongest here


def test_accepts_the_api_models() -> None:
    metrics = AuditMetrics.model_validate({"train": scores(25.0, 0.7, 0.9), "infer": scores(24.0, 0.6, 0.8)})
    worst = WorstCaseByColumn.model_validate({"train": {"attack": "gan", "mse": 0.003, "attacks": 1}})
    result = verdict(metrics, worst, attack="gan")
    assert result.level == "leaks" and [e.attack for e in result.evidence] == ["gan", "gan"]


def test_older_results_without_identity_or_worst_case_say_what_was_not_used() -> None:
    metrics = {"train": {"n": 50, "mse": 0.08, "psnr": 11.0, "ssim": 0.1},
               "infer": {"n": 50, "mse": 0.09, "psnr": 10.5, "ssim": 0.12}}
    result = verdict(metrics, None, attack="decoder")
    assert result.level == "protected"  # the identity ratio counts where measured; PSNR and SSIM are both low
    assert all(e.unused == ("identity ratio",) and e.identity_ratio is None for e in result.evidence)
    assert all(e.attack == "decoder" for e in result.evidence)
    text = " ".join(result.reasons)
    assert "could not use identity ratio" in text and "names no strongest attack" in text
    assert "Identity leakage (attack accuracy) is not recorded" in text


def test_a_missing_image_metric_rules_out_protected() -> None:
    result = verdict({"infer": {"n": 50, "mse": 0.09, "psnr": 10.5, "ssim": None}})
    assert result.level == "partial"
    assert result.evidence[0].unused == ("SSIM", "identity ratio")
    assert "could not use SSIM or identity ratio" in result.reasons[0]


@pytest.mark.parametrize("metrics", [None, {}, {"train": None}, {"train": {"n": 0, "mse": None, "psnr": None,
                                                                             "ssim": None}}])
def test_no_usable_metrics_gives_no_verdict(metrics: Any) -> None:
    result = verdict(metrics)
    assert result.level == "unknown" and result.evidence == () and result.headline.startswith("No verdict")


def test_captured_column_has_no_identity_to_miss() -> None:
    result = verdict({"captured": scores(12.0, 0.1)})
    assert result.level == "protected" and result.evidence[0].unused == ()


def test_one_attack_caveat_with_the_api_models_and_no_captured_column() -> None:
    """The audit view's models leave ``captured`` unset when nothing was captured: the caveat still applies."""
    metrics = AuditMetrics.model_validate({"train": scores(13.0, 0.2, 0.1), "infer": scores(14.0, 0.2, 0.1)})
    worst = WorstCaseByColumn.model_validate({column: {"attack": "decoder", "mse": metrics_mse, "attacks": 1}
                                              for column, metrics_mse in (("train", 0.05), ("infer", 0.04))})
    result = verdict(metrics, worst, attack="decoder")
    assert result.level == "protected"
    assert any("Only one attack was run" in reason for reason in result.reasons)
