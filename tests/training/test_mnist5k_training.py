"""Training on MNIST-5k: the profile's σ and λ apply, and the validation part is the data set's own stratified 500."""

from __future__ import annotations

from pathlib import Path

from cem.bundle import load_bundle
from cem.data.mnist5k import MNIST5K_VALIDATION_FRACTION
from training import TrainConfig, train
from training.config import profile_for


def test_one_epoch_on_mnist5k_validates_on_its_stratified_carve(tmp_path: Path) -> None:
    result = train(TrainConfig(dataset="mnist5k", out_dir=tmp_path / "run", epochs=1, width=0.125, progress=False,
                               validation_fraction=MNIST5K_VALIDATION_FRACTION, device="cpu"))
    manifest, _ = load_bundle(result.bundle)
    profile = profile_for("mnist5k")
    assert manifest.dataset.name == "mnist5k" and manifest.dataset.image_size == 32
    assert manifest.noise_std == profile.noise_std
    assert manifest.cem is not None and manifest.cem.lam == profile.cem_lambda
    assert manifest.training["validation"] == {"fraction": 0.125, "carve": "mnist5k's own (cem.data.mnist5k)",
                                               "size": 500}
    assert result.metrics.val_accuracy is not None and 0.0 <= result.metrics.val_accuracy <= 1.0
