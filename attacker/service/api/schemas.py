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

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from attacker.attack_names import ATTACKS, NETWORK_ATTACKS, OPTIMIZING_ATTACKS, AttackName
from attacker.service.jobs import AuditStatus

BoundKind = Literal["floor", "estimate", "relative"]  # = cem.bounds.BOUND_KINDS (checked by a test)
MAX_EPOCHS = 1000
MAX_NETWORK_CHANNELS = 512
MAX_NETWORK_BLOCKS = 32
MAX_OPTIMIZE_STEPS = 100_000
NETWORK_DEFAULT = "default: the paper's decoding network"  # DecoderAttackConfig (not imported: it needs torch)
OPTIMIZE_STEPS_DEFAULT = 300  # = OptimizeAttackConfig.steps (not imported: it needs torch; checked by a test)
MAX_MIN_STEPS = 100_000
MIN_STEPS_DEFAULT = 0  # = DecoderAttackConfig.min_steps (not imported: it needs torch; checked by a test)
MIN_STEPS_HELP = (
    "least optimizer steps of the decoder's training: its epochs are raised until the run takes this many (small "
    "attacker sets have few steps an epoch); also decoder+optimize's decoder and the gan's decoder pre-training"
)
ATTACK_DESCRIPTION = (
    f"inversion attack, one of {', '.join(ATTACKS)}: decoder trains a decoding network on features, gan fine-tunes "
    "it adversarially, optimize searches per intercepted feature for the image the encoder maps to it (no "
    "decoding network, no epochs), decoder+optimize refines the decoder's reconstruction by that search"
)


class AuditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    bundle: str = Field(min_length=1, max_length=200, description="bundle folder name under --bundles, or its model id")
    attack: AttackName = Field(AttackName.DECODER, strict=False, description=ATTACK_DESCRIPTION)
    epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS,
        description="attack training epochs (default: the attack's own); for decoder+optimize the decoder's; "
                    "refused for optimize, which has no epochs (see optimize_steps)",
    )
    network_channels: int | None = Field(
        None, ge=1, le=MAX_NETWORK_CHANNELS,
        description=f"width of the attacker's decoding network, also the GAN's generator and decoder+optimize's "
                    f"decoder ({NETWORK_DEFAULT}); refused for optimize, which has none",
    )
    network_blocks: int | None = Field(
        None, ge=0, le=MAX_NETWORK_BLOCKS,
        description=f"residual blocks of the attacker's decoding network, also the GAN's generator and "
                    f"decoder+optimize's decoder ({NETWORK_DEFAULT}); refused for optimize, which has none",
    )
    min_steps: int | None = Field(
        None, ge=0, le=MAX_MIN_STEPS,
        description=f"{MIN_STEPS_HELP} (default: {MIN_STEPS_DEFAULT}, the epochs as given); refused for optimize, "
                    f"which trains no decoding network",
    )
    optimize_steps: int | None = Field(
        None, ge=1, le=MAX_OPTIMIZE_STEPS,
        description=f"optimisation steps per image (and restart) of optimize and decoder+optimize (default: "
                    f"{OPTIMIZE_STEPS_DEFAULT}); refused for decoder and gan, which do not optimise per image",
    )
    dataset: str | None = Field(None, description="data set the attacker trains on (default: the bundle's)")
    use_captures: bool = Field(True, description="also reconstruct the features the tap captured for this model")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    # Field validators run in field order, after ``attack``: each error names its own field ("body", field).
    # ``attack`` missing from ``info.data`` means it was itself refused; that error is reported alone.
    @field_validator("epochs")
    @classmethod
    def _epochs_fit_the_attack(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("attack") is AttackName.OPTIMIZE:
            raise ValueError("the optimize attack has no epochs: its budget is optimize_steps, per image")
        return value

    @field_validator("network_channels", "network_blocks", "min_steps")
    @classmethod
    def _network_fits_the_attack(cls, value: int | None, info: ValidationInfo) -> int | None:
        attack = info.data.get("attack")
        if value is not None and attack is not None and attack not in NETWORK_ATTACKS:
            raise ValueError(f"the {attack} attack has no decoding network to size or train")
        return value

    @field_validator("optimize_steps")
    @classmethod
    def _steps_fit_the_attack(cls, value: int | None, info: ValidationInfo) -> int | None:
        attack = info.data.get("attack")
        if value is not None and attack is not None and attack not in OPTIMIZING_ATTACKS:
            raise ValueError(f"the {attack} attack does not optimise per image: optimize_steps applies to "
                             f"{' and '.join(a for a in AttackName if a in OPTIMIZING_ATTACKS)} only")
        return value

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
    attack_accuracy: float | None = Field(
        None, description="identity leakage: the share of reconstructions that an evaluation classifier, trained on "
                          "the attacker's own images only, assigns to their true class; the labelled columns only "
                          "(train, infer), absent in older results"
    )
    classifier_accuracy: float | None = Field(
        None, description="that classifier on the original scored images: the ceiling attack_accuracy is read "
                          "against (a perfect reconstruction reaches it)"
    )
    chance_accuracy: float | None = Field(
        None, description="1 / number of classes: what a reconstruction that carries nothing about the class gets"
    )


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


class OptimizeRun(BaseModel):
    """The per-image optimisation of ``optimize`` and ``decoder+optimize`` on one column's data (as the audit
    recorded it; every field may be null, so results recorded by another version still read)."""

    tv_weight: float | None = Field(
        None, description="τ, the total-variation weight chosen on the attacker's validation images"
    )
    steps: int | None = Field(None, description="optimisation steps per image and restart")
    restarts: int | None = Field(None, description="starts per image; the one with the lowest final objective is kept")
    lr: float | None = Field(None, description="Adam's initial learning rate on the image logits")
    steps_per_image: int | None = Field(
        None, description="steps × restarts: the optimisation each scored image received"
    )
    sigma: float | None = Field(
        None, description="the σ of the likelihood term (the bundle's noise, or a floor without noise)"
    )
    val_mse_by_tv_weight: dict[str, float | None] = Field(
        default_factory=dict, description="the validation MSE of every τ tried (keys: τ as text)"
    )
    selection_s: float | None = Field(None, description="wall time of choosing τ, in seconds")
    decoder_val_mse: float | None = Field(
        None, description="decoder+optimize: the decoder's own best validation MSE before refinement"
    )


class DecoderAlone(BaseModel):
    """decoder+optimize: what its decoder scored on the same images before the refinement."""

    mse: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    attack_accuracy: float | None = Field(
        None, description="its reconstructions' attack accuracy (see MetricSet); absent in older results"
    )
    epochs: int | None = Field(None, description="epochs its decoder trained")
    best_epoch: int | None = Field(None, description="the decoder epoch whose weights were kept")
    still_improving: bool | None = Field(None, description="its decoder had not converged")


class AttackTraining(BaseModel):
    """How the attack's training (or, for the optimisation attacks, its per-image optimisation) went on one
    column's data."""

    epochs: int = Field(
        description="epochs run; for optimize and decoder+optimize, whose epochs are optimisation steps: the "
                    "steps per image (and restart)"
    )
    best_epoch: int = Field(
        description="the epoch whose weights were kept (lowest validation MSE); 0: none; for the optimisation "
                    "attacks the last step"
    )
    still_improving: bool = Field(
        description="more epochs would likely reconstruct better (doubling the epochs lowered the validation MSE "
                    "by more than 2 %, or it still fell over the last epochs; for the optimisation attacks over "
                    "the last tenth of the steps, and for decoder+optimize also when its decoder had not "
                    "converged): the attack stopped early, so its MSE makes the defense look better than it is"
    )
    doubling_gain: float | None = Field(
        None, description="the convergence check: how much lower (relative) the best validation MSE was with all "
                          "the epochs than with half of them; null where the check did not run"
    )
    resumed_epochs: int = Field(
        0, ge=0, description="epochs an earlier, interrupted run of the same attack on the same inputs had trained "
                             "and this one continued from (the GAN attack is resumable); attack_s excludes them"
    )
    pretraining_cached: bool = Field(
        False, description="the GAN attack's decoder pre-training was an earlier run's on the same inputs, loaded "
                           "from the cache; attack_s excludes it"
    )
    attack_s: float | None = Field(None, description="wall time of training the attack (or choosing τ), seconds")
    eval_s: float | None = Field(None, description="wall time of reconstructing and scoring the held-out images")
    optimize: OptimizeRun | None = Field(None, description="optimize and decoder+optimize: the optimisation")
    decoder_alone: DecoderAlone | None = Field(
        None, description="decoder+optimize: its decoder's scores on the same images, before refinement"
    )
    classifier_val_accuracy: float | None = Field(
        None, description="the evaluation classifier behind attack_accuracy on the attacker's validation images "
                          "(it never sees a scored image); absent in older results"
    )


class AttackTrainingByColumn(BaseModel):
    train: AttackTraining | None = None
    infer: AttackTraining | None = None


class WorstCase(BaseModel):
    """One column's strongest attack: the lowest MSE among the attacks the audit ran (cem.worst_case)."""

    attack: str = Field(
        description=f"the attack that reconstructed best, one of {', '.join(ATTACKS)} (decoder: decoder+optimize's "
                    "decoder alone, when it beat the refinement)"
    )
    mse: float = Field(description="its MSE on this column's scored images")
    attacks: int = Field(
        ge=1, description="how many attacks were compared; 1: only one attack was run, so this is its own MSE, not a "
                          "worst case over attacks"
    )


class WorstCaseByColumn(BaseModel):
    train: WorstCase | None = None
    infer: WorstCase | None = None
    captured: WorstCase | None = None


class AuditView(BaseModel):
    id: str
    status: AuditStatus
    bundle: str
    model_id: str
    attack: AttackName
    epochs: int | None
    network_channels: int | None = Field(None, description="as requested; None: the paper's decoding network")
    network_blocks: int | None = Field(None, description="as requested; None: the paper's decoding network")
    min_steps: int | None = Field(
        None, description=f"as requested; None: the decoder's default ({MIN_STEPS_DEFAULT}, the epochs as given)"
    )
    optimize_steps: int | None = Field(
        None, description=f"as requested; None: the optimisation attacks' default ({OPTIMIZE_STEPS_DEFAULT})"
    )
    dataset: str | None
    use_captures: bool
    seed: int
    progress: float = Field(ge=0, le=1)
    message: str | None
    cancel_requested: bool
    metrics: AuditMetrics | None
    bound: PrivacyBound | None
    training: AttackTrainingByColumn | None = Field(None, description="per column, how the attack's training went")
    worst_case: WorstCaseByColumn | None = Field(
        None, description="per column, the strongest of the attacks this audit ran (a defense is only as strong as "
                          "the strongest attack against it); null for results recorded before it existed"
    )
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
