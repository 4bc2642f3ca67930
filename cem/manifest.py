"""The bundle manifest: the typed record of what a model is and how to rebuild it.

``manifest.json`` is ``Manifest.to_dict``. Its parts are typed records
(``SplitModelConfig``, ``DatasetInfo``, ``CEMRecord``, ``MetricsRecord``) whose
``to_dict`` is the JSON on disk; reading checks each value's type and ignores
keys it does not know, so bundles written by a version that recorded more
still load. Reading and writing the bundle folder is ``cem.bundle``'s job.
"""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, TypeVar

from cem.data import DatasetInfo
from cem.errors import BundleFormatError, ConfigError
from cem.models import SplitModelConfig
from cem.units import lambda_units_of

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHT_FILES = {"encoder": "encoder.safetensors", "decoder": "decoder.safetensors"}

_Record = TypeVar("_Record")


def _stored_as(key: str) -> Any:
    """An optional record field whose JSON key differs from its name (a key kept for bundles on disk)."""
    return field(default=None, metadata={"key": key})


def _json_key(spec: Field[Any]) -> str:
    return spec.metadata.get("key", spec.name)


def _check_record(record: Any, where: str) -> None:
    """``__post_init__`` of a flat record: each value has its field's type (an int is a float too)
    and becomes a plain int, float, str or bool (numpy scalars included); None only where optional."""
    hints = typing.get_type_hints(type(record))
    for spec in fields(record):
        value = getattr(record, spec.name)
        if value is None:
            if spec.default is MISSING:
                raise ConfigError(f"expected {where}.{_json_key(spec)}, got none")
            continue
        kind = next(t for t in typing.get_args(hints[spec.name]) or (hints[spec.name],) if t is not type(None))
        accepted = (int, float) if kind is float else kind
        if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"expected {where}.{_json_key(spec)} to be {kind.__name__}, got {value!r}")
        object.__setattr__(record, spec.name, kind(value))


def _record_from_dict(cls: type[_Record], data: Any, where: str) -> _Record:
    """A flat record from its JSON object; absent or null is None. Unknown keys are ignored on
    purpose, so bundles written by a version that recorded more still load."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected {where} to be a JSON object, got {type(data).__name__}")
    return cls(**{spec.name: data.get(_json_key(spec)) for spec in fields(cls)})  # type: ignore[arg-type]


def _record_to_dict(record: Any) -> dict[str, Any]:
    """The JSON object of a flat record: fields in declaration order under their JSON keys, None left out."""
    return {
        _json_key(spec): getattr(record, spec.name) for spec in fields(record) if getattr(record, spec.name) is not None
    }


@dataclass(frozen=True)
class CEMRecord:
    """``manifest.cem``: the CEM settings the model was trained with (``training.cem_plugin.CEMConfig``,
    its ``lambda_units``, and the σ and d of Theorem 1). Only ``lam`` is required; None: not recorded
    (hand-written or older bundles), left out of ``to_dict``."""

    lam: float
    k: int | None = None
    loss_form: str | None = None
    evaluate_on: str | None = None
    lr_coupling: str | None = None
    warmup_epochs: int | None = None
    kmeans_iters: int | None = None
    persist_updates: bool | None = None
    ref_gain: float | None = None
    ref_gamma: float | None = None
    ref_tau: float | None = None
    lambda_units: str | None = None
    noise_std: float | None = None
    image_dim: int | None = None

    def __post_init__(self) -> None:
        _check_record(self, "cem")

    @property
    def units(self) -> str:
        """The unit of ``lam`` (``cem.units``): the legacy unit where the bundle records none."""
        return str(lambda_units_of(self.to_dict()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CEMRecord:
        return _record_from_dict(cls, data, "cem")

    def to_dict(self) -> dict[str, Any]:
        return _record_to_dict(self)


@dataclass(frozen=True)
class MetricsRecord:
    """``manifest.metrics``: what training measured; None: not measured, left out of ``to_dict``.

    ``xi_relative`` and ``xi_estimate`` are the ξ of Theorem 1 of kind ``relative`` and ``estimate``
    (``cem.bounds``), named after the audit API's ``xi``. They are stored under the keys bundles have
    always used, ``mse_bound_xi`` and ``mse_bound_xi_estimate``, so bundles on disk need no migration.
    """

    accuracy: float | None = None  # test split, every client transform on
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    information_bound: float | None = None  # nats, Eq. 16
    entropy_bound: float | None = None  # H(x|z) lower bound with H(x) := 0, nats (= -information_bound)
    entropy_bound_per_dim: float | None = None
    xi_relative: float | None = _stored_as("mse_bound_xi")
    entropy_x_estimate: float | None = None
    entropy_bound_estimate: float | None = None
    xi_estimate: float | None = _stored_as("mse_bound_xi_estimate")
    native_dim: float | None = None  # d of the estimate: C·n·n at the native side n
    mean_image_mse: float | None = None
    mean_image_mse_native: float | None = None

    def __post_init__(self) -> None:
        _check_record(self, "metrics")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricsRecord:
        return _record_from_dict(cls, data, "metrics")

    def to_dict(self) -> dict[str, float]:
        return _record_to_dict(self)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``."""

    model_id: str
    model: SplitModelConfig
    noise_std: float
    dataset: DatasetInfo
    files: dict[str, str]
    defenses: list[dict[str, Any]] = field(default_factory=list)
    cem: CEMRecord | None = None
    metrics: MetricsRecord = field(default_factory=MetricsRecord)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return self.model.feature_shape

    @property
    def class_names(self) -> list[str]:
        names = list(self.dataset.class_names)
        return names if len(names) == self.model.num_classes else [str(i) for i in range(self.model.num_classes)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model_id": self.model_id,
            "created_at": self.created_at,
            "model": self.model.to_dict(),
            "feature_shape": list(self.feature_shape),
            "normalization": {"mean": list(self.model.mean), "std": list(self.model.std)},
            "noise_std": self.noise_std,
            "dataset": self.dataset.to_dict(),
            "defenses": self.defenses,
            "cem": self.cem.to_dict() if self.cem is not None else None,
            "metrics": self.metrics.to_dict(),
            "training": self.training,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleFormatError(f"expected bundle format_version {FORMAT_VERSION}, got {version!r}")
        try:
            manifest = cls(
                model_id=str(data["model_id"]),
                model=SplitModelConfig.from_dict(data["model"]),
                noise_std=float(data["noise_std"]),
                dataset=DatasetInfo.from_dict(data["dataset"]),
                files={k: str(v) for k, v in data["files"].items()},
                defenses=list(data.get("defenses") or []),
                cem=CEMRecord.from_dict(data["cem"]) if data.get("cem") else None,
                metrics=MetricsRecord.from_dict(data.get("metrics") or {}),
                training=dict(data.get("training") or {}),
                created_at=str(data.get("created_at", "")),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise BundleFormatError(f"manifest is incomplete or malformed: {exc}") from exc
        if set(manifest.files) != set(WEIGHT_FILES):
            raise BundleFormatError(f"expected sha256 entries for {sorted(WEIGHT_FILES)}, got {sorted(manifest.files)}")
        if manifest.model_id != derive_model_id(manifest.files):
            raise BundleFormatError("manifest model_id does not match the recorded weight hashes")
        if manifest.noise_std < 0:
            raise BundleFormatError(f"expected noise_std >= 0, got {manifest.noise_std}")
        return manifest


def derive_model_id(files: dict[str, str]) -> str:
    """A short id that changes whenever either half's weights change."""
    joined = "|".join(f"{name}:{files[name]}" for name in sorted(files))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]
