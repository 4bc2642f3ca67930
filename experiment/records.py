"""What a finished cell stores: its numbers read back from the CLIs' own outputs, and the attack's convergence.

A train record holds the bundle's manifest numbers (accuracy, the entropy bound
and ξ in ``metrics``, σ, λ, the defenses as recorded, the training time); an
attack record holds ``cem-attack``'s ``metrics.json`` per column (MSE, PSNR,
SSIM, attack accuracy) and, per column, how the attack trained: its epochs, best
epoch, validation curve, whether it was still improving, and its wall times.

Convergence is part of the record because an attack stopped too early makes a
defense look stronger than it is. The attacks judge it themselves
(``TrainedAttack.still_improving`` in ``attacker.attacks.loop``), and the record
follows their judgment:

* *not converged* when the attack says it was still improving: with its
  half-budget run (the decoder attack, the optimisation attacks; ``doubling_gain``
  set), doubling its epochs lowered the best validation MSE by more than 2 %;
  without one, the best fell by more than 2 % in the last tenth of the epochs;
* *converged* when the half-budget run says doubling did not help, whatever the
  best epoch: those attacks decay their learning rate to a floor, so their last
  epoch is nearly always their best, converged or not (the attacker's own reason
  for the half-budget test);
* without a half-budget result, *not converged* also when the best epoch is the
  last one (a longer run might have done better; the GAN attack, whose learning
  rate does not decay to a floor, and runs too short for the half-budget test);
* *unjudged* when the attack had no validation images: nothing to judge by, so
  the column is reported apart instead of passing as converged.

The optimisation attacks report their step budget as their best "epoch", so the
best-is-last test never applies to them.

Each attack record also names the model it attacked (``model_id``, the bundle's
weight hash from ``metrics.json``), so an attack of an earlier bundle under the
same train key is not taken as this bundle's (``experiment.store``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cem.convergence import doubling_note
from experiment.cells import AttackCell, TrainCell

if TYPE_CHECKING:  # cem.manifest loads torch; the report reads records without it
    from cem.manifest import Manifest

COLUMNS = ("train", "infer")  # cem-attack's two protocols: the attacker's data is the train split, or inference data
RECORD_FORMAT = 1
DETAIL_KEYS = ("epochs", "best_epoch", "still_improving", "doubling_gain", "val_mse", "resumed_epochs",
               "pretraining_cached", "attack_s", "eval_s", "fit", "val", "eval")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def train_record(cell: TrainCell, manifest: Manifest, summary: Mapping[str, Any] | None, *, wall_s: float,
                 command: str, code_revision: str | None) -> dict[str, Any]:
    """The stored record of a train cell whose bundle has the manifest ``manifest``; ``code_revision``: the
    revision that made it (``experiment.revision``)."""
    return {
        "kind": "train", "key": cell.key, "format": RECORD_FORMAT, "finished_at": _now(),
        "dataset": cell.dataset, "arch": cell.arch, "cut_layer": cell.cut_layer, "seed": cell.seed,
        "config": dict(cell.config), "args": list(cell.args), "command": command, "wall_s": round(wall_s, 3),
        "code_revision": code_revision, "bundle": f"bundles/{cell.key}",
        "model_id": manifest.model_id,
        "accuracy": manifest.metrics.accuracy,
        "noise_std": manifest.noise_std,
        "cem_lambda": manifest.cem.lam if manifest.cem is not None else 0.0,
        "defenses": manifest.defenses,
        "metrics": manifest.metrics.to_dict(),
        "training": {k: manifest.training.get(k) for k in ("epochs", "duration_s", "cpu_s") if k in manifest.training},
        # cem-train --json names the temporary folder it wrote; the bundle now lives under the cell's key
        "summary": {**summary, "bundle": f"bundles/{cell.key}"} if summary is not None else None,
    }


def has_validation(detail: Mapping[str, Any]) -> bool:
    """Whether the attack had validation images to judge its training by."""
    if detail.get("val") == 0:
        return False
    curve = detail.get("val_mse")
    return not isinstance(curve, list) or any(value is not None for value in curve)


def column_convergence(detail: Mapping[str, Any]) -> str | None:
    """Why one column's attack counts as not converged, or None (converged, or unjudged: ``column_unjudged``);
    the rules are the module docstring's."""
    epochs, best = detail.get("epochs"), detail.get("best_epoch")
    gain = detail.get("doubling_gain")
    if detail.get("still_improving"):
        if gain is not None:
            return f"still improving: {doubling_note(gain)}"
        return f"still improving: validation MSE still falling at the end of its {epochs} epochs (best {best})"
    if gain is not None or not has_validation(detail):
        return None
    if "optimize" not in detail and isinstance(epochs, int) and isinstance(best, int) and epochs > 0 \
            and best >= epochs:
        return f"best epoch is its last ({best} of {epochs}) and no half-budget run judged it"
    return None


def column_unjudged(detail: Mapping[str, Any]) -> str | None:
    """Why one column's convergence could not be judged (no validation images), or None."""
    if column_convergence(detail) is None and not has_validation(detail):
        return "no validation images: its convergence was not judged"
    return None


def attack_record(cell: AttackCell, result: Mapping[str, Any], *, wall_s: float, command: str,
                  code_revision: str | None) -> dict[str, Any]:
    """The stored record of an attack cell from ``cem-attack``'s ``metrics.json`` (``AuditResult.to_dict``);
    ``code_revision``: the revision that made it (``experiment.revision``)."""
    details = result.get("details") or {}
    columns = {}
    for column in COLUMNS:
        detail = details.get(column) or {}
        entry = {k: detail.get(k) for k in DETAIL_KEYS}
        if "optimize" in detail:
            entry["optimize"] = detail["optimize"]
        entry["not_converged"] = column_convergence(detail)
        entry["unjudged"] = column_unjudged(detail)
        columns[column] = entry
    return {
        "kind": "attack", "key": cell.key, "format": RECORD_FORMAT, "finished_at": _now(),
        "train_key": cell.train_key, "model_id": details.get("model_id"), "attack": cell.attack, "seed": cell.seed,
        "config": dict(cell.config),
        "args": list(cell.args), "command": command, "wall_s": round(wall_s, 3), "code_revision": code_revision,
        "outputs": f"attacks/{cell.key}",
        "metrics": {column: result["metrics"][column] for column in COLUMNS},
        "bound": result.get("bound"),
        "worst_case": details.get("worst_case"),
        "network": details.get("network"),
        "columns": columns,
    }


# What the report shows beside Table 1's MSE (experiment.detail): per attack and column, from metrics.json
DETAIL_STATS = ("psnr", "ssim", "attack_accuracy")
# ... and per column the epoch whose network a learned attack returned (0: its initial one), from the record's
# columns; an optimisation attack has steps, not epochs, and no such number
BEST_EPOCH = "best_epoch"
# ... and per model, from the train record's metrics: its two ξ (cem.bounds), by kind
XI_METRICS = {"estimate": "mse_bound_xi_estimate", "relative": "mse_bound_xi"}


def detail_metric(attack: str, stat: str, column: str) -> str:
    return f"{attack}_{stat}_{column}"


def xi_metric(kind: str) -> str:
    return f"xi_{kind}"


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (records hold what the CLIs wrote)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def model_details(train: Mapping[str, Any]) -> dict[str, float]:
    """A train record's ξ of each kind, where finite."""
    metrics = train.get("metrics") or {}
    found = {xi_metric(kind): finite_number(metrics.get(name)) for kind, name in XI_METRICS.items()}
    return {name: value for name, value in found.items() if value is not None}


def attack_details(attack: str, record: Mapping[str, Any]) -> dict[str, float]:
    """An attack record's PSNR, SSIM and attack accuracy per column, where finite, and a learned attack's best
    epoch."""
    found = {}
    for column in COLUMNS:
        metrics = (record.get("metrics") or {}).get(column) or {}
        for stat in DETAIL_STATS:
            if (value := finite_number(metrics.get(stat))) is not None:
                found[detail_metric(attack, stat, column)] = value
        detail = (record.get("columns") or {}).get(column) or {}
        if "optimize" not in detail and (epoch := finite_number(detail.get(BEST_EPOCH))) is not None:
            found[detail_metric(attack, BEST_EPOCH, column)] = epoch
    return found


def bound_exceeded(record: Mapping[str, Any]) -> dict[str, bool]:
    """Per ξ kind, whether the attack of ``record`` reconstructed below that ξ, as cem-attack judged and stored it
    (the estimate against the MSE at the images' native resolution, the relative ξ against the model-resolution
    MSE). A kind whose attack MSE is missing or not finite (a diverged attack) has no verdict: cem-attack stores
    False there, which would read as "not below"."""
    bound = record.get("bound") or {}
    found = {}
    for entry in (bound, bound.get("relative") or {}):
        if (entry.get("kind") in XI_METRICS and isinstance(entry.get("exceeds_attack"), bool)
                and finite_number(entry.get("attack_mse")) is not None):
            found[entry["kind"]] = entry["exceeds_attack"]
    return found
