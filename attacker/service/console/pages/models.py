"""The models page: every bundle the service can audit, with its defenses, CEM λ, training metrics and bound.

The bound is shown with its kind (``cem.bounds``: floor, estimate or relative) and
the kind's label and warnings, never as a bare "bound": no ξ computed here is a
proven floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from attacker.service.api.deps import get_catalog, get_settings
from attacker.service.bundles import BundleEntry
from attacker.service.console.web import PREFIX, ConsolePage, ConsoleRoute
from cem.bounds import BOUND_LABELS

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


@dataclass(frozen=True)
class ModelRow:
    """One bundle as the models table shows it; numbers stay numbers (the template formats them)."""

    name: str  # folder name under --bundles
    model_id: str
    arch: str
    cut_layer: int | None
    dataset: str
    feature_shape: str  # "C×H×W"
    noise_std: float
    cem: str  # "λ = 2 (paper units)", or "no CEM"
    defenses: list[str]
    accuracy: float | None  # test split
    train_accuracy: float | None
    val_accuracy: float | None
    epochs: int | None
    bound: dict[str, Any] | None  # cem.bounds.privacy_bound: kind, xi, label, warnings (and relative)


def describe_defense(record: Mapping[str, Any]) -> str:
    """``{"name": "dropout", "p": 0.2}`` -> ``"dropout (p 0.2)"``."""
    params = ", ".join(f"{key} {value}" for key, value in record.items() if key != "name")
    name = str(record.get("name", "unnamed defense"))
    return f"{name} ({params})" if params else name


def describe_cem(entry: BundleEntry) -> str:
    cem = entry.manifest.cem
    return "no CEM" if cem is None else f"λ = {cem.lam:g} ({cem.units} units)"


def model_row(entry: BundleEntry) -> ModelRow:
    manifest = entry.manifest
    metrics = manifest.metrics
    epochs = manifest.training.get("epochs")
    return ModelRow(
        name=entry.name,
        model_id=manifest.model_id,
        arch=manifest.model.arch,
        cut_layer=manifest.model.cut_layer,
        dataset=manifest.dataset.name,
        feature_shape="×".join(str(n) for n in manifest.feature_shape),
        noise_std=manifest.noise_std,
        cem=describe_cem(entry),
        defenses=[describe_defense(d) for d in manifest.defenses if isinstance(d, Mapping)],
        accuracy=metrics.accuracy,
        train_accuracy=metrics.train_accuracy,
        val_accuracy=metrics.val_accuracy,
        epochs=epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None,
        bound=entry.bound,
    )


@router.get("/models")
def models_page(page: ConsolePage) -> HTMLResponse:
    settings = get_settings(page.request)
    rows = [model_row(entry) for entry in get_catalog(settings).list_bundles()]
    kinds = sorted({row.bound["kind"] for row in rows if row.bound is not None}
                   | {"relative" for row in rows if row.bound is not None and row.bound.get("relative")})
    return page.render("models.html", title="Models", rows=rows, bundles_dir=str(settings.bundles_dir),
                       kind_labels=[(kind, BOUND_LABELS[kind]) for kind in kinds if kind in BOUND_LABELS])
