"""What can be audited (bundles) and what was intercepted (captures)."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter

from attacker.service.api.deps import CapturesDep, CatalogDep
from attacker.service.api.schemas import BundleList, BundleView, CaptureSummaryView, ModelCapturesView, PrivacyBound
from attacker.service.bundles import BundleEntry

router = APIRouter(prefix="/v1", tags=["catalog"])


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def to_bundle_view(entry: BundleEntry) -> BundleView:
    manifest = entry.manifest
    accuracy = manifest.metrics.accuracy
    return BundleView(
        name=entry.name,
        model_id=manifest.model_id,
        arch=manifest.model.arch,
        dataset=manifest.dataset.name,
        feature_shape=list(manifest.feature_shape),
        noise_std=manifest.noise_std,
        defenses=manifest.defenses,
        cem={**manifest.cem.to_dict(), "lambda_units": manifest.cem.units} if manifest.cem else None,
        accuracy=accuracy,
        bound=PrivacyBound.model_validate(entry.bound) if entry.bound is not None else None,
    )


@router.get("/bundles", response_model=BundleList, summary="Bundles that can be audited")
def list_bundles(catalog: CatalogDep) -> BundleList:
    return BundleList(bundles=[to_bundle_view(e) for e in catalog.list_bundles()])


@router.get("/captures", response_model=CaptureSummaryView, summary="What the tap intercepted, per model")
def get_captures(captures: CapturesDep) -> CaptureSummaryView:
    summary = captures.summary()
    return CaptureSummaryView(
        requests=summary.requests,
        samples=summary.samples,
        first_at=_utc(summary.first_at) if summary.first_at is not None else None,
        last_at=_utc(summary.last_at) if summary.last_at is not None else None,
        models=[
            ModelCapturesView(
                model_id=m.model_id,
                requests=m.requests,
                samples=m.samples,
                samples_with_ids=m.samples_with_ids,
                sample_shapes=m.sample_shapes,
                dtypes=m.dtypes,
                first_at=_utc(m.first_at),
                last_at=_utc(m.last_at),
            )
            for m in summary.models
        ],
    )
