"""A plain-language verdict on an audit: do the strongest attack's reconstructions leak the private images?

Judged per column (train, infer, captured) on the strongest attack the audit ran,
the one with the lowest MSE (``details["worst_case"]``): a defense is only as strong
as the strongest attack against it. Three readings of a reconstruction, each with
a "recognisable" and a "not recognisable" threshold:

* PSNR = 10·log10(1 / MSE) on images in [0, 1]. At ``LEAK_PSNR_DB`` = 20 dB the
  error is an RMS of 0.1 of the intensity range per pixel: digits keep their
  strokes (at about 28 dB they are near copies).
  ``SAFE_PSNR_DB`` = 15 dB is within 1.5 dB of guessing the data set's mean image
  for every input (13.5 dB on the digits test split), a guess that knows nothing
  about the particular image.
* SSIM (structural similarity, 1 = identical). At ``LEAK_SSIM`` = 0.5 the local
  structure (edges, strokes) of the original is largely there; below
  ``SAFE_SSIM`` = 0.3 little is left beyond overall brightness.
* Identity ratio = (attack accuracy − chance) / (classifier accuracy − chance):
  the share of what a classifier learns about the class from the originals that
  it still learns from the reconstructions (0: nothing beyond chance, 1: as much
  as from the originals). ``LEAK_IDENTITY`` = 0.5: more than half of the class
  information survives; ``SAFE_IDENTITY`` = 0.2: at most a fifth. Only the
  labelled columns record it, and results older than the field do not.

The rule (``RULE``): *leaks* when any column crosses any "recognisable" threshold;
*protected* when every column is below all of the "not recognisable" ones (PSNR
and SSIM must both be recorded, the identity ratio counts where it was measured);
*partial* otherwise. A result without any usable numbers gets *unknown*. Pure
functions only: the console renders what ``verdict`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from attacker.service.report import SPLITS

Level = Literal["leaks", "partial", "protected", "unknown"]

LEAK_PSNR_DB = 20.0
LEAK_SSIM = 0.5
LEAK_IDENTITY = 0.5
SAFE_PSNR_DB = 15.0
SAFE_SSIM = 0.3
SAFE_IDENTITY = 0.2
LABELLED_COLUMNS = ("train", "infer")  # the columns with class labels: the only ones with an identity ratio

RULE = (
    f"Judged per column on the strongest attack (the lowest MSE). Leaks: in any column PSNR ≥ {LEAK_PSNR_DB:g} dB, "
    f"or SSIM ≥ {LEAK_SSIM:g}, or identity ratio ≥ {LEAK_IDENTITY:g}. Protected: in every column PSNR < "
    f"{SAFE_PSNR_DB:g} dB and SSIM < {SAFE_SSIM:g} and, where measured, identity ratio < {SAFE_IDENTITY:g}. "
    "Partial: anything in between. Identity ratio = (attack accuracy − chance) / (classifier accuracy − chance): "
    "how much of the class information in the originals the reconstructions still carry."
)
HEADLINES: dict[Level, str] = {
    "leaks": "Leaks: the reconstructions are recognisable",
    "partial": "Partial protection: the reconstructions are degraded but not unrecognisable",
    "protected": "Protected: the reconstructions are not recognisable",
    "unknown": "No verdict: this result records no metrics the verdict can use",
}


@dataclass(frozen=True)
class Evidence:
    """The numbers one column's judgement used: its strongest attack's scores and the identity ratio."""

    column: str
    label: str
    attack: str | None  # None: the result names no strongest attack (older results): the audit's own scores
    n: int | None
    mse: float | None
    psnr: float | None
    ssim: float | None
    attack_accuracy: float | None
    classifier_accuracy: float | None
    chance_accuracy: float | None
    identity_ratio: float | None
    level: Level
    findings: tuple[str, ...]  # each threshold this column crossed or stayed under, in words
    unused: tuple[str, ...]  # the metrics it could not use (not recorded, or not finite)


@dataclass(frozen=True)
class Verdict:
    level: Level
    headline: str
    reasons: list[str]
    rule: str
    evidence: tuple[Evidence, ...] = ()


def _mapping(value: Any) -> dict[str, Any]:
    """A dict, a pydantic model (``AuditMetrics``, ``MetricSet``, ``WorstCase``...) or None, as a plain dict whose
    absent entries are left out (a model's unset optional fields would otherwise read as None entries)."""
    if value is None:
        return {}
    if hasattr(value, "model_dump"):
        return dict(value.model_dump(exclude_none=True))
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, Mapping) else {}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def identity_ratio(attack_accuracy: float | None, classifier_accuracy: float | None,
                   chance_accuracy: float | None) -> float | None:
    """(attack − chance) / (classifier − chance); None when a value is missing or the classifier beats no chance."""
    if attack_accuracy is None or classifier_accuracy is None or chance_accuracy is None:
        return None
    if classifier_accuracy - chance_accuracy <= 0:
        return None
    return (attack_accuracy - chance_accuracy) / (classifier_accuracy - chance_accuracy)


def _strongest_scores(column: str, metrics: dict[str, Any], worst: dict[str, Any], alternatives: dict[str, Any],
                      own_attack: str | None) -> tuple[str | None, dict[str, Any]]:
    """The column's scores of its strongest attack: another attack's (the hybrid's decoder alone) where the worst
    case names one the caller passed, else the audit's own (the classifier and chance are the column's either way)."""
    own = _mapping(metrics.get(column))
    entry = _mapping(worst.get(column))
    attack = entry.get("attack") if isinstance(entry.get("attack"), str) else own_attack
    other = _mapping(_mapping(alternatives.get(attack)).get(column)) if attack is not None else {}
    if other:
        scores = {**own, **{k: v for k, v in other.items() if k in ("mse", "psnr", "ssim", "attack_accuracy")}}
        return attack, scores
    return attack, own


def judge_column(column: str, label: str, attack: str | None, scores: Mapping[str, Any]) -> Evidence | None:
    """One column's evidence and level; None when it has no scores at all."""
    if not scores:
        return None
    psnr, ssim = _finite(scores.get("psnr")), _finite(scores.get("ssim"))
    accuracy, classifier = _finite(scores.get("attack_accuracy")), _finite(scores.get("classifier_accuracy"))
    chance = _finite(scores.get("chance_accuracy"))
    ratio = identity_ratio(accuracy, classifier, chance)
    leaks, safe, between, unused = [], [], [], []
    for name, value, leak, limit, unit in (("PSNR", psnr, LEAK_PSNR_DB, SAFE_PSNR_DB, " dB"),
                                           ("SSIM", ssim, LEAK_SSIM, SAFE_SSIM, ""),
                                           ("identity ratio", ratio, LEAK_IDENTITY, SAFE_IDENTITY, "")):
        if value is None:
            if name != "identity ratio" or column in LABELLED_COLUMNS:  # captures carry no labels
                unused.append(name)
        elif value >= leak:
            leaks.append(f"{name} {value:.3g}{unit} ≥ {leak:g}{unit}")
        elif value < limit:
            safe.append(f"{name} {value:.3g}{unit} < {limit:g}{unit}")
        else:
            between.append(f"{name} {value:.3g}{unit} between {limit:g} and {leak:g}{unit}")
    if psnr is None and ssim is None and ratio is None:
        return None
    level: Level
    if leaks:
        level = "leaks"
    elif between or "PSNR" in unused or "SSIM" in unused:
        level = "partial"  # protected needs both image readings, and all below their limits
    else:
        level = "protected"
    n = scores.get("n")
    return Evidence(
        column=column, label=label, attack=attack, n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        mse=_finite(scores.get("mse")), psnr=psnr, ssim=ssim, attack_accuracy=accuracy,
        classifier_accuracy=classifier, chance_accuracy=chance, identity_ratio=ratio, level=level,
        findings=tuple(leaks + between + safe), unused=tuple(unused),
    )


def _reason(evidence: Evidence) -> str:
    attack = evidence.attack or "the audit's attack"
    images = f", {evidence.n} images" if evidence.n is not None else ""
    text = f"{evidence.label} ({attack}{images}): {evidence.level}: {', '.join(evidence.findings)}"
    if evidence.unused:
        text += f"; could not use {' or '.join(evidence.unused)} (not recorded or not finite)"
    return text


def verdict(metrics: Any, worst_case: Any = None, alternatives: Mapping[str, Any] | None = None,
            attack: str | None = None) -> Verdict:
    """The verdict on one audit's scores.

    ``metrics``: ``{column: {"n", "mse", "psnr", "ssim", "attack_accuracy", "classifier_accuracy",
    "chance_accuracy"}}`` (a result's ``metrics`` or an ``AuditMetrics``); ``worst_case``: ``{column: {"attack",
    "mse", "attacks"}}`` (``details["worst_case"]``; None for older results: the audit's own scores are used);
    ``alternatives``: ``{attack: {column: scores}}``, the scores of the other attacks the audit ran (the hybrid's
    decoder alone), used where the worst case names one of them; ``attack``: the audit's own attack, named where
    the worst case names none.
    """
    metrics_map, worst = _mapping(metrics), _mapping(worst_case)
    others = {name: value for name, value in (alternatives or {}).items() if value is not None}
    evidence = []
    for column, label in SPLITS:
        strongest, scores = _strongest_scores(column, metrics_map, worst, others, attack)
        judged = judge_column(column, label, strongest, scores)
        if judged is not None:
            evidence.append(judged)
    if not evidence:
        return Verdict("unknown", HEADLINES["unknown"], ["No column records PSNR, SSIM or attack accuracy."], RULE)
    levels = {e.level for e in evidence}
    level: Level = "leaks" if "leaks" in levels else "protected" if levels == {"protected"} else "partial"
    reasons = [_reason(e) for e in evidence if level != "leaks" or e.level == "leaks"]
    if not worst:
        reasons.append("This result names no strongest attack (recorded before that field): the verdict uses the "
                       "audit's own attack.")
    elif level != "leaks" and all(_mapping(entry).get("attacks") == 1 for entry in worst.values()):
        reasons.append("Only one attack was run: the verdict holds against it; a stronger attack may do better.")
    if any("identity ratio" in e.unused for e in evidence):
        reasons.append("Identity leakage (attack accuracy) is not recorded for every labelled column: the verdict "
                       "could not use it there.")
    return Verdict(level, HEADLINES[level], reasons, RULE, tuple(evidence))
