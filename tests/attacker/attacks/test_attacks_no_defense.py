"""The attacks on the No_defense baseline: unbounded features with the full VGG channel count."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from attacker.attacks import (
    DecoderAttackConfig,
    build_attack_split,
    compute_feature_set,
    evaluate_attack,
    load_images,
    train_decoder_attack,
)
from cem.bundle import load_encoder
from cem.models import InversionConfig, InversionNetwork, SplitModelConfig
from cem.obfuscation import ObfuscationConfig

ONE_EPOCH_DECODER = DecoderAttackConfig(epochs=1, batch_size=32, lr=3e-3, num_blocks=0, channels=16)


def test_inversion_network_takes_the_full_width_features() -> None:
    shape = SplitModelConfig(bottleneck_channels=None, width=1.0).feature_shape
    assert shape == (128, 8, 8)  # the paper's VGG11 at cut 4, no bottleneck
    network = InversionNetwork(InversionConfig.for_features(shape, 3, 32, num_blocks=0, channels=16)).eval()
    with torch.no_grad():
        images = network(torch.rand(2, *shape) * 5.0)  # unbounded ReLU-like inputs
    assert tuple(images.shape) == (2, 3, 32, 32) and bool(((images > 0) & (images < 1)).all())


def test_decoder_attack_runs_on_a_no_defense_bundle(no_defense_bundle: Path) -> None:
    manifest, encoder = load_encoder(no_defense_bundle)
    obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    assert obfuscation.is_identity and manifest.feature_shape == (16, 8, 8)
    sets = {split: compute_feature_set(encoder, load_images("digits", split)) for split in ("train", "test")}
    assert float(sets["train"].features.max()) > 1.0  # unbounded, as sent
    split = build_attack_split("train", sets["train"], sets["test"], seed=0)
    trained = train_decoder_attack(split, obfuscation, ONE_EPOCH_DECODER, seed=0)
    metrics = evaluate_attack(trained.network, split.eval, obfuscation, seed=1).metrics
    assert metrics["n"] == len(sets["test"]), metrics
    assert all(math.isfinite(metrics[k]) for k in ("mse", "psnr", "ssim")), metrics
