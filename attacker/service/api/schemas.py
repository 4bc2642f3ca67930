"""Request and response bodies of the audit API (separate models in and out).

Request models forbid unknown fields and coerce nothing (``strict``), so a typo
or a quoted number is a 422 that names the field rather than a silent default.
Enum fields are the exception: strict pydantic wants an enum *instance*, which
a JSON body never holds, so they validate the value (``strict=False``) and
still refuse anything that is not one of the enum's values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from attacker.attack_names import AttackName
from attacker.service.jobs import AuditStatus

BoundKind = Literal["floor", "estimate", "relative"]  # = cem.bounds.BOUND_KINDS (checked by a test)
MAX_EPOCHS = 1000
MAX_NETWORK_CHANNELS = 512
MAX_NETWORK_BLOCKS = 32
NETWORK_DEFAULT = "default: the paper's decoding network"  # DecoderAttackConfig (not imported: it needs torch)


class AuditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    bundle: str = Field(min_length=1, max_length=200, description="bundle folder name under --bundles, or its model id")
    attack: AttackName = Field(
        AttackName.DECODER, strict=False, description="inversion attack: trained decoder or GAN"
    )
    epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="attack training epochs (default: the attack's own)"
    )
    network_channels: int | None = Field(
        None, ge=1, le=MAX_NETWORK_CHANNELS,
        description=f"width of the attacker's decoding network, also the GAN's generator ({NETWORK_DEFAULT})",
    )
    network_blocks: int | None = Field(
        None, ge=0, le=MAX_NETWORK_BLOCKS,
        description=f"residual blocks of the attacker's decoding network, also the GAN's generator ({NETWORK_DEFAULT})",
    )
    dataset: str | None = Field(None, description="data set the attacker trains on (default: the bundle's)")
    use_captures: bool = Field(True, description="also reconstruct the features the tap captured for this model")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        from cem.data import available_datasets  # here: it imports torch, which the API's clients never need

        if value is not None and value not in available_datasets():
            raise ValueError(f"expected one of {', '.join(available_datasets())}, got {value!r}")
        return value


class AuditAccepted(BaseModel):
    id: str
    status: AuditStatus


class MetricSet(BaseModel):
    """Reconstruction quality over ``n`` images in [0, 1] (None: not finite, e.g. the PSNR of a perfect copy)."""

    model_config = ConfigDict(extra="allow")

    mse: float | None
    psnr: float | None
    ssim: float | None
    ssim_ref: float | None = None  # pytorch_ssim's zero-padded SSIM, the paper's; absent in older results
    mse_native: float | None = None  # both images pooled to the data's native side (the bound's estimate scale)
    n: int


class BoundValue(BaseModel):
    """One ξ of Theorem 1 with what it is (``kind``, see cem.bounds) and how it compares with real attackers."""

    kind: BoundKind = Field(
        description="floor: proven; estimate: H(x) estimated; relative: H(x) := 0, ranks models only"
    )
    xi: float = Field(description="the ξ value on the per-pixel MSE scale")
    entropy_bound: float | None = Field(
        None, description="the H(x|z) lower bound ξ comes from, in nats, same convention"
    )
    label: str
    mean_image_mse: float | None = Field(None, description="Tr Cov(x)/d: the MSE of the mean-image guess")
    exceeds_mean_image: bool = False
    attack_mse: float | None = Field(None, description="the lowest MSE this audit's attacks reached at this scale")
    exceeds_attack: bool = False
    entropy_x: float | None = None
    dimension: int | None = None
    assumption: str | None = None


class PrivacyBound(BoundValue):
    """The headline ξ (the estimate when the bundle has one), the relative ξ, and warnings in words."""

    relative: BoundValue | None = None
    warnings: list[str] = Field(default_factory=list)


class AuditMetrics(BaseModel):
    train: MetricSet | None = None
    infer: MetricSet | None = None
    captured: MetricSet | None = None


class AttackTraining(BaseModel):
    """How the attack network's training went on one column's data."""

    epochs: int = Field(description="epochs run")
    best_epoch: int = Field(description="the epoch whose weights were kept (lowest validation MSE); 0: none")
    still_improving: bool = Field(
        description="more epochs would likely reconstruct better (doubling the epochs lowered the validation MSE "
                    "by more than 2 %, or it still fell over the last epochs): the attack stopped early, so its "
                    "MSE makes the defense look better than it is"
    )
    doubling_gain: float | None = Field(
        None, description="the convergence check: how much lower (relative) the best validation MSE was with all "
                          "the epochs than with half of them; null where the check did not run"
    )


class AttackTrainingByColumn(BaseModel):
    train: AttackTraining | None = None
    infer: AttackTraining | None = None


class AuditView(BaseModel):
    id: str
    status: AuditStatus
    bundle: str
    model_id: str
    attack: AttackName
    epochs: int | None
    network_channels: int | None = Field(None, description="as requested; None: the paper's decoding network")
    network_blocks: int | None = Field(None, description="as requested; None: the paper's decoding network")
    dataset: str | None
    use_captures: bool
    seed: int
    progress: float = Field(ge=0, le=1)
    message: str | None
    cancel_requested: bool
    metrics: AuditMetrics | None
    bound: PrivacyBound | None
    training: AttackTrainingByColumn | None = Field(None, description="per column, how the attack's training went")
    captured_reconstructions: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AuditList(BaseModel):
    audits: list[AuditView]


class BundleView(BaseModel):
    name: str
    model_id: str
    arch: str
    dataset: str
    feature_shape: list[int]
    noise_std: float
    defenses: list[dict[str, Any]]
    cem: dict[str, Any] | None
    accuracy: float | None
    bound: PrivacyBound | None


class BundleList(BaseModel):
    bundles: list[BundleView]


class ModelCapturesView(BaseModel):
    model_id: str
    requests: int
    samples: int
    samples_with_ids: int
    sample_shapes: list[list[int]]
    dtypes: list[str]
    first_at: datetime
    last_at: datetime


class CaptureSummaryView(BaseModel):
    requests: int
    samples: int
    first_at: datetime | None
    last_at: datetime | None
    models: list[ModelCapturesView]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    workers: int
    queued: int
    running: int


class ErrorBody(BaseModel):
    detail: str


# FastAPI's ``responses=`` argument: extra OpenAPI responses per status code.
OpenApiResponses = dict[int | str, dict[str, Any]]
