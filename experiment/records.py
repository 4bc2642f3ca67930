"""What a finished cell stores: its numbers read back from the CLIs' own outputs, and the attack's convergence.

A train record holds the bundle's manifest numbers (accuracy, the entropy bound
and ξ in ``metrics``, σ, λ, the defenses as recorded, the training time); an
attack record holds ``cem-attack``'s ``metrics.json`` per column (MSE, PSNR,
SSIM, attack accuracy) and, per column, how the attack trained: its epochs, best
epoch, validation curve, whether it was still improving, and its wall times.

Convergence is part of the record because an attack stopped too early makes a
defense look stronger than it is. A column is flagged *not converged* when the
attack says it was still improving (its validation MSE still falling at the end,
or doubling its epochs still helped by more than 2 %: ``TrainedAttack.still_improving``)
or when its best epoch is its last one (a longer run might have done better).
The optimisation attacks report their step budget as their best "epoch", so
only the first test applies to them.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from experiment.cells import AttackCell, TrainCell

if TYPE_CHECKING:  # cem.manifest loads torch; the report reads records without it
    from cem.manifest import Manifest

COLUMNS = ("train", "infer")  # cem-attack's two protocols: the attacker's data is the train split, or inference data
RECORD_FORMAT = 1
DETAIL_KEYS = ("epochs", "best_epoch", "still_improving", "doubling_gain", "val_mse", "attack_s", "eval_s",
               "fit", "val", "eval")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def train_record(cell: TrainCell, manifest: Manifest, summary: Mapping[str, Any] | None, *, wall_s: float,
                 command: str) -> dict[str, Any]:
    """The stored record of a train cell whose bundle has the manifest ``manifest``."""
    return {
        "kind": "train", "key": cell.key, "format": RECORD_FORMAT, "finished_at": _now(),
        "dataset": cell.dataset, "arch": cell.arch, "cut_layer": cell.cut_layer, "seed": cell.seed,
        "config": dict(cell.config), "args": list(cell.args), "command": command, "wall_s": round(wall_s, 3),
        "bundle": f"bundles/{cell.key}",
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


def column_convergence(detail: Mapping[str, Any]) -> str | None:
    """Why one column's attack counts as not converged, or None when it converged (see the module docstring)."""
    epochs, best = detail.get("epochs"), detail.get("best_epoch")
    if detail.get("still_improving"):
        gain = detail.get("doubling_gain")
        if gain is not None:
            return f"still improving: doubling its epochs lowered the validation MSE by {100 * gain:.1f} %"
        return f"still improving: validation MSE still falling at the end of its {epochs} epochs (best {best})"
    if "optimize" not in detail and isinstance(epochs, int) and isinstance(best, int) and epochs > 0 \
            and best >= epochs:
        return f"best epoch is its last ({best} of {epochs})"
    return None


def attack_record(cell: AttackCell, result: Mapping[str, Any], *, wall_s: float, command: str) -> dict[str, Any]:
    """The stored record of an attack cell from ``cem-attack``'s ``metrics.json`` (``AuditResult.to_dict``)."""
    details = result.get("details") or {}
    columns = {}
    for column in COLUMNS:
        detail = details.get(column) or {}
        entry = {k: detail.get(k) for k in DETAIL_KEYS}
        if "optimize" in detail:
            entry["optimize"] = detail["optimize"]
        entry["not_converged"] = column_convergence(detail)
        columns[column] = entry
    return {
        "kind": "attack", "key": cell.key, "format": RECORD_FORMAT, "finished_at": _now(),
        "train_key": cell.train_key, "attack": cell.attack, "seed": cell.seed, "config": dict(cell.config),
        "args": list(cell.args), "command": command, "wall_s": round(wall_s, 3),
        "outputs": f"attacks/{cell.key}",
        "metrics": {column: result["metrics"][column] for column in COLUMNS},
        "bound": result.get("bound"),
        "worst_case": details.get("worst_case"),
        "network": details.get("network"),
        "columns": columns,
    }
