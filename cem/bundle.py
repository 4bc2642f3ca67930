"""Model bundles: the contract between training and every other part.

A bundle is a folder with ``manifest.json``, ``encoder.safetensors`` and
``decoder.safetensors``. The manifest records what is needed to rebuild either
half without guessing (architecture, feature shape, normalisation, the noise σ
the edge must add, defenses, CEM settings, data set, metrics) and the sha256 of
each weight file. Loading verifies the hash of every file it reads, so a
tampered or truncated file fails loudly. No pickle: weights are safetensors,
metadata is JSON (``cem.manifest``). Every file is written durably
(``cem.durable``): after a crash a file is complete or absent, and the manifest,
written last, only ever names complete weight files.

The edge loads only the encoder and the cloud only the decoder
(``load_encoder``/``load_decoder`` never open the other file), so a device can
be given a bundle folder with the other half removed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from cem.data import DatasetInfo
from cem.durable import write_durably
from cem.errors import BundleFormatError, BundleIntegrityError, BundleNotFoundError
from cem.manifest import (
    MANIFEST_FILE,
    WEIGHT_FILES,
    CEMRecord,
    Manifest,
    MetricsRecord,
    derive_model_id,
)
from cem.models import SplitDecoder, SplitEncoder, SplitModel


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(
    out_dir: str | Path,
    model: SplitModel,
    *,
    noise_std: float,
    dataset: DatasetInfo | Mapping[str, Any],
    defenses: list[dict[str, Any]] | None = None,
    cem: CEMRecord | Mapping[str, Any] | None = None,
    metrics: MetricsRecord | Mapping[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Manifest:
    """Write the two weight files, then the manifest (written last); every file durably.

    ``dataset``, ``cem`` and ``metrics`` are the manifest's records or their JSON objects (as
    ``to_dict`` writes them), checked before anything is written.
    """
    dataset_record = dataset if isinstance(dataset, DatasetInfo) else DatasetInfo.from_dict(dataset)
    cem_record = cem if isinstance(cem, CEMRecord) else CEMRecord.from_dict(cem) if cem else None
    metrics_record = metrics if isinstance(metrics, MetricsRecord) else MetricsRecord.from_dict(metrics or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        path = out / WEIGHT_FILES[part]
        # One metadata key only: safetensors writes its metadata map in a random order, and two
        # keys would make the file bytes (and so the model id) differ between identical models.
        data = safetensors_bytes(state, metadata={"part": part})
        write_durably(path, data)
        hashes[part] = hashlib.sha256(data).hexdigest()
    manifest = Manifest(
        model_id=derive_model_id(hashes),
        model=model.config,
        noise_std=float(noise_std),
        dataset=dataset_record,
        files=hashes,
        defenses=list(defenses or []),
        cem=cem_record,
        metrics=metrics_record,
        training=dict(training or {}),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_durably(out / MANIFEST_FILE, (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode())
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
