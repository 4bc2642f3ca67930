"""The attacks on a ResNet-20 bundle: the inversion network is built from the features the encoder really emits.

At the default cut on 64-px TinyImageNet images the edge sends 8×16×16, so the decoding network has
log2(64 / 16) = 2 upsampling stages (the reference's 16 → 64 decoder, reference_notes §5.1); nothing
about the shapes is looked up by arch or data-set name.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from attacker.attacks import (
    DecoderAttackConfig,
    build_attack_split,
    compute_feature_set,
    evaluate_attack,
    load_images,
    train_decoder_attack,
)
from attacker.audit import AuditSpec, run_audit
from cem.bundle import load_encoder
from cem.obfuscation import ObfuscationConfig

ONE_EPOCH_DECODER = DecoderAttackConfig(epochs=1, batch_size=8, num_blocks=0, channels=8)


def test_decoder_attack_network_takes_the_resnet20_feature_shape(resnet20_bundle: tuple[Path, Path]) -> None:
    data, bundle = resnet20_bundle
    manifest, encoder = load_encoder(bundle)
    obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    sets = {s: compute_feature_set(encoder, load_images("tinyimagenet", s, data)) for s in ("train", "test")}
    assert tuple(sets["train"].features.shape[1:]) == manifest.feature_shape == (8, 16, 16)
    split = build_attack_split("train", sets["train"], sets["test"], seed=0)
    trained = train_decoder_attack(split, obfuscation, ONE_EPOCH_DECODER, seed=0)
    config = trained.network.config
    assert (config.feature_channels, config.feature_size, config.image_channels, config.image_size) == (8, 16, 3, 64)
    assert config.upsampling_stages == 2
    evaluation = evaluate_attack(trained.network, split.eval, obfuscation, seed=1)
    assert evaluation.metrics["n"] == len(sets["test"]) and math.isfinite(evaluation.metrics["mse"])
    assert tuple(evaluation.reconstructions.shape[1:]) == (3, 64, 64)


@pytest.mark.parametrize("attack", ["decoder", "gan"])
def test_an_audit_of_a_resnet20_bundle_scores_both_protocols(resnet20_bundle: tuple[Path, Path], attack: str) -> None:
    data, bundle = resnet20_bundle
    result = run_audit(AuditSpec(bundle_dir=bundle, attack=attack, data_dir=data, epochs=1, device="cpu",
                                 network_channels=8, network_blocks=0))
    assert set(result.metrics) == {"train", "infer"}
    assert result.metrics["train"]["n"] == len(load_images("tinyimagenet", "test", data))
    assert all(math.isfinite(m["mse"]) and 0.0 <= m["mse"] <= 1.0 for m in result.metrics.values())
    assert result.reconstructions_png.startswith(b"\x89PNG")
