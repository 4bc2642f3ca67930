"""Bundle round trip, and tampering/truncation detection, on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cem.bundle import load_bundle, load_decoder, load_encoder, load_manifest, save_bundle
from cem.errors import BundleFormatError, BundleIntegrityError, BundleNotFoundError
from cem.models import SplitModel, SplitModelConfig


@pytest.fixture()
def bundle(tmp_path: Path) -> tuple[Path, SplitModel]:
    torch.manual_seed(0)
    model = SplitModel(SplitModelConfig(width=0.125, in_channels=1, mean=(0.3,), std=(0.3,))).eval()
    save_bundle(
        tmp_path / "b", model, noise_std=0.1,
        dataset={"name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 32,
                 "mean": [0.3], "std": [0.3], "class_names": [str(i) for i in range(10)]},
        defenses=[{"name": "noise", "std": 0.1}, {"name": "dropout", "p": 0.2}],
        cem={"lam": 1.0, "k": 3}, metrics={"accuracy": 0.5, "entropy_bound": -10.0}, training={"epochs": 1},
    )
    return tmp_path / "b", model


def test_round_trip_restores_both_halves_and_the_manifest(bundle: tuple[Path, SplitModel]) -> None:
    path, model = bundle
    manifest, loaded = load_bundle(path)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert manifest.model == model.config
    assert manifest.noise_std == 0.1 and manifest.defenses[1] == {"name": "dropout", "p": 0.2}
    assert manifest.cem == {"lam": 1.0, "k": 3} and manifest.metrics["entropy_bound"] == -10.0
    assert manifest.feature_shape == (8, 8, 8) and len(manifest.model_id) == 16


def test_edge_loads_without_the_decoder_file(bundle: tuple[Path, SplitModel]) -> None:
    path, model = bundle
    (path / "decoder.safetensors").unlink()
    _, encoder = load_encoder(path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(x), model.encoder(x))
    with pytest.raises(BundleNotFoundError, match="decoder weights"):
        load_decoder(path)


def test_flipped_byte_is_detected(bundle: tuple[Path, SplitModel]) -> None:
    path, _ = bundle
    weights = path / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="encoder.safetensors failed verification.*modified or truncated"):
        load_encoder(path)
    load_decoder(path)  # the other half is still usable


def test_truncated_file_is_detected(bundle: tuple[Path, SplitModel]) -> None:
    path, _ = bundle
    weights = path / "decoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BundleIntegrityError, match="modified or truncated"):
        load_bundle(path)


def test_edited_manifest_hash_is_detected(bundle: tuple[Path, SplitModel], tmp_path: Path) -> None:
    path, _ = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["encoder"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match="model_id does not match"):
        load_manifest(path)


def test_swapped_weights_from_another_bundle_are_detected(bundle: tuple[Path, SplitModel], tmp_path: Path) -> None:
    path, _ = bundle
    other = SplitModel(SplitModelConfig(width=0.125, in_channels=1, mean=(0.3,), std=(0.3,)))
    save_bundle(tmp_path / "other", other, noise_std=0.1, dataset={"name": "digits"})
    shutil.copy(tmp_path / "other" / "encoder.safetensors", path / "encoder.safetensors")
    with pytest.raises(BundleIntegrityError):
        load_encoder(path)


def test_missing_or_garbled_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleNotFoundError, match="expected a bundle manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(BundleFormatError, match="format_version 1, got 99"):
        load_manifest(tmp_path)


def test_same_weights_always_give_the_same_files_and_model_id(bundle: tuple[Path, SplitModel], tmp_path: Path) -> None:
    path, model = bundle
    first = load_manifest(path)
    ids = {save_bundle(tmp_path / f"again{i}", model, noise_std=0.1, dataset=first.dataset).model_id for i in range(6)}
    assert ids == {first.model_id}
