"""Model bundles: the contract between training and every other part.

A bundle is a folder with ``manifest.json``, ``encoder.safetensors`` and
``decoder.safetensors``. The manifest records what is needed to rebuild either
half without guessing (architecture, feature shape, normalisation, the noise σ
the edge must add, defenses, CEM settings, data set, metrics) and the sha256 of
each weight file. Loading verifies the hash of every file it reads, so a
tampered or truncated file fails loudly. No pickle: weights are safetensors,
metadata is JSON.

The edge loads only the encoder and the cloud only the decoder
(``load_encoder``/``load_decoder`` never open the other file), so a device can
be given a bundle folder with the other half removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cem.errors import BundleFormatError, BundleIntegrityError, BundleNotFoundError, ConfigError
from cem.models import SplitDecoder, SplitEncoder, SplitModel, SplitModelConfig

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHT_FILES = {"encoder": "encoder.safetensors", "decoder": "decoder.safetensors"}


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``."""

    model_id: str
    model: SplitModelConfig
    noise_std: float
    dataset: dict[str, Any]
    files: dict[str, str]
    defenses: list[dict[str, Any]] = field(default_factory=list)
    cem: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return self.model.feature_shape

    @property
    def class_names(self) -> list[str]:
        names = list(self.dataset.get("class_names") or [])
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
            "dataset": self.dataset,
            "defenses": self.defenses,
            "cem": self.cem,
            "metrics": self.metrics,
            "training": self.training,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleFormatError(f"expected bundle format_version {FORMAT_VERSION}, got {version!r}")
        try:
            manifest = cls(
                model_id=str(data["model_id"]),
                model=SplitModelConfig.from_dict(data["model"]),
                noise_std=float(data["noise_std"]),
                dataset=dict(data["dataset"]),
                files={k: str(v) for k, v in data["files"].items()},
                defenses=list(data.get("defenses") or []),
                cem=data.get("cem"),
                metrics=dict(data.get("metrics") or {}),
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def derive_model_id(files: dict[str, str]) -> str:
    """A short id that changes whenever either half's weights change."""
    joined = "|".join(f"{name}:{files[name]}" for name in sorted(files))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def save_bundle(
    out_dir: str | Path,
    model: SplitModel,
    *,
    noise_std: float,
    dataset: dict[str, Any],
    defenses: list[dict[str, Any]] | None = None,
    cem: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Manifest:
    """Write the two weight files, then the manifest (written last, atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        path = out / WEIGHT_FILES[part]
        # One metadata key only: safetensors writes its metadata map in a random order, and two
        # keys would make the file bytes (and so the model id) differ between identical models.
        save_file(state, str(path), metadata={"part": part})
        hashes[part] = sha256_file(path)
    manifest = Manifest(
        model_id=derive_model_id(hashes),
        model=model.config,
        noise_std=float(noise_std),
        dataset=dict(dataset),
        files=hashes,
        defenses=list(defenses or []),
        cem=cem,
        metrics=dict(metrics or {}),
        training=dict(training or {}),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST_FILE)
    return manifest


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` without touching the weights."""
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise BundleNotFoundError(f"expected a bundle manifest at {path}, but it does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleFormatError(f"expected a JSON object in {path}, got {type(data).__name__}")
    return Manifest.from_dict(data)


def _load_state(bundle_dir: Path, manifest: Manifest, part: str, device: str | torch.device) -> dict[str, torch.Tensor]:
    path = bundle_dir / WEIGHT_FILES[part]
    if not path.is_file():
        raise BundleNotFoundError(f"expected the {part} weights at {path}, but the file does not exist")
    actual = sha256_file(path)
    if actual != manifest.files[part]:
        raise BundleIntegrityError(
            f"{path.name} failed verification: sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.files[part][:12]}…; the file was modified or truncated"
        )
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleFormatError(f"{path.name} is not a readable safetensors file: {exc}") from exc


def _restore(module: torch.nn.Module, state: dict[str, torch.Tensor], part: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleFormatError(f"{part} weights do not fit the architecture in the manifest: {exc}") from exc


def load_encoder(bundle_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Manifest, SplitEncoder]:
    """Manifest and verified encoder in eval mode; never opens the decoder file."""
    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle)
    encoder = SplitEncoder(manifest.model)
    _restore(encoder, _load_state(bundle, manifest, "encoder", device), "encoder")
    return manifest, encoder.to(device).eval()


def load_decoder(bundle_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Manifest, SplitDecoder]:
    """Manifest and verified decoder in eval mode; never opens the encoder file."""
    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle)
    decoder = SplitDecoder(manifest.model)
    _restore(decoder, _load_state(bundle, manifest, "decoder", device), "decoder")
    return manifest, decoder.to(device).eval()


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Manifest, SplitModel]:
    """Both halves, verified, as one model in eval mode (training and experiments only)."""
    manifest, encoder = load_encoder(bundle_dir, device)
    _, decoder = load_decoder(bundle_dir, device)
    model = SplitModel(manifest.model)
    model.encoder, model.decoder = encoder, decoder
    return manifest, model.to(device).eval()
