"""PATROL: the front conv, the edge's channel pruning, the optimiser rebuilt after it (B10), and the bundle."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import training.defenses
from attacker.attacks.data import build_attack_split, compute_feature_set
from attacker.attacks.loop import inversion_config_for
from attacker.audit import AuditSpec, run_audit
from cem.bundle import load_decoder, load_encoder, save_bundle
from cem.errors import ConfigError
from cem.models import InversionNetwork, SplitModel, SplitModelConfig
from cem.models.split_resnet import BasicBlock
from edge_client.runtime import EncoderRuntime
from training import TrainConfig, train
from training.defenses import DefenseStack, PatrolDefense, parse_defense
from training.loops import train_one_epoch
from training.patrol import carry_optimizer_state, channels_to_keep, encoder_parameters, matching_ratio, prune_edge
from training.trainer import build_defenses

CPU = torch.device("cpu")
TINY = {"width": 0.25, "in_channels": 1, "num_classes": 4, "mean": (0.3,), "std": (0.3,), "front_conv": True}
DIGITS = {"name": "digits", "num_classes": 4, "in_channels": 1, "image_size": 32, "mean": [0.3], "std": [0.3],
          "class_names": [str(i) for i in range(4)]}


RESNET = {"arch": "resnet20", "image_size": 64, "width": 0.25, "num_classes": 4, "front_conv": True}


def trained_model(seed: int = 0, **config: object) -> SplitModel:
    """A PATROL model (``TINY`` unless ``config`` is given) whose BN statistics and biases are no longer
    at their initial values."""
    torch.manual_seed(seed)
    model = SplitModel(SplitModelConfig(**(config or TINY)))  # type: ignore[arg-type]
    shape = (model.config.in_channels, model.config.image_size, model.config.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        x, y = torch.rand(8, *shape), torch.randint(0, 4, (8,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def batch() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.rand(8, 1, 32, 32, generator=g), torch.arange(8) % 4), batch_size=8)


def test_pruning_keeps_the_largest_l2_filters_and_equals_silencing_the_others() -> None:
    model = trained_model()
    reference = copy.deepcopy(model.encoder)  # the dropped channels silenced: their BN scale and shift set to 0
    layers = list(reference.features)
    trunk = [(m, layers[i + 1]) for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)][1:]  # after the front conv
    assert len(trunk) == 2
    for conv, bn in trunk:
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        norms = conv.weight.detach().flatten(1).norm(dim=1)
        kept = norms.topk(conv.out_channels - round(0.25 * conv.out_channels)).indices.sort().values
        assert torch.equal(channels_to_keep(conv, 0.25), kept)
        dropped = torch.ones(conv.out_channels, dtype=torch.bool)
        dropped[kept] = False
        with torch.no_grad():
            bn.weight[dropped], bn.bias[dropped] = 0.0, 0.0
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        unpruned = model.encoder(x)
    config = prune_edge(model, 0.25)
    assert config.edge_channels == (12, 24) and model.config == model.decoder.config == config
    assert model.encoder.bottleneck.in_channels == 24 and model.decoder.expand.out_channels == 32  # type: ignore[union-attr]
    with torch.no_grad():
        assert torch.allclose(model.encoder(x), reference(x), atol=1e-6)
        assert not torch.allclose(model.encoder(x), unpruned, atol=1e-3)  # channels really went


def test_resnet20_pruning_narrows_only_the_blocks_inner_channels_and_equals_silencing_them() -> None:
    model = trained_model(**RESNET)
    reference = copy.deepcopy(model.encoder)  # each block's dropped inner channels silenced: bn1 scale and shift 0
    blocks = [m for m in reference.features if isinstance(m, BasicBlock)]
    assert len(blocks) == 4  # cut 5: stage 1 and the first block of stage 2
    for block in blocks:
        dropped = torch.ones(block.conv1.out_channels, dtype=torch.bool)
        dropped[channels_to_keep(block.conv1, 0.25)] = False
        with torch.no_grad():
            block.bn1.weight[dropped], block.bn1.bias[dropped] = 0.0, 0.0
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        unpruned = model.encoder(x)
    config = prune_edge(model, 0.25)
    assert config.edge_channels == (6, 6, 6, 12) and model.config == model.decoder.config == config
    pruned = [m for m in model.encoder.features if isinstance(m, BasicBlock)]
    assert [(b.conv1.out_channels, b.conv2.in_channels, b.conv2.out_channels) for b in pruned] == [
        (6, 6, 8), (6, 6, 8), (6, 6, 8), (12, 12, 16)]  # block outputs (tied to the shortcut) stay whole
    front = model.encoder.features[1]
    assert isinstance(front, nn.Conv2d) and (front.in_channels, front.out_channels, front.bias) == (4, 4, None)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x), reference(x), atol=1e-6)
        assert not torch.allclose(model.encoder(x), unpruned, atol=1e-3)
        assert model(x).shape == (4, 4)


def test_the_matching_ratio_brings_the_encoder_back_to_the_others_size() -> None:
    config = SplitModelConfig(front_conv=True)
    baseline = encoder_parameters(SplitModelConfig())
    ratio = matching_ratio(config)
    assert ratio == 0.055
    pruned = encoder_parameters(prune_config(config, ratio))
    assert pruned == 83_723 <= baseline == 85_256
    assert encoder_parameters(prune_config(config, ratio - 0.005)) > baseline  # the smallest such ratio
    assert encoder_parameters(prune_config(config, 0.05)) == 85_583  # the reference's fixed 0.05
    resnet = SplitModelConfig(arch="resnet20", image_size=64, front_conv=True)
    assert encoder_parameters(resnet) == 112_472 + 16 * 16 * 9  # the reference's front conv: 3×3, no bias, no BN
    assert matching_ratio(resnet) == 0.02
    assert encoder_parameters(prune_config(resnet, 0.02)) == 112_320 <= 112_472
    assert encoder_parameters(prune_config(resnet, 0.015)) > 112_472
    with pytest.raises(ConfigError, match="at cut 1 ResNet-20's edge is its stem"):
        matching_ratio(SplitModelConfig(arch="resnet20", image_size=64, front_conv=True, cut_layer=1))


def prune_config(config: SplitModelConfig, ratio: float) -> SplitModelConfig:
    """What ``prune_edge`` leaves, by really pruning a model (not the helper under test)."""
    model = SplitModel(config)
    return prune_edge(model, ratio)


def one_step(model: SplitModel, optimizer: torch.optim.Optimizer) -> None:
    train_one_epoch(model, batch(), optimizer, obfuscation=DefenseStack(()).obfuscation(), defenses=DefenseStack(()),
                    cem=None, cem_weight=0.0, generator=torch.Generator().manual_seed(2), device=CPU)


def test_b10_after_pruning_the_rebuilt_optimiser_still_moves_the_encoder() -> None:
    model = trained_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1], gamma=0.2)
    one_step(model, optimizer)
    scheduler.step()  # lr 0.1 -> 0.02, and the decoder has momentum now
    defense = PatrolDefense(weight=1.0, prune_epoch=2, prune_ratio=0.25, ssim_threshold=0.5)
    assert not defense.before_epoch(model, 1) and model.config.edge_channels is None
    assert defense.before_epoch(model, 2) and model.config.edge_channels == (12, 24)

    stale = copy.deepcopy(optimizer)  # the reference's state: an optimiser over the replaced Parameters
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in held for p in model.encoder.parameters())

    rebuilt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rescheduled = torch.optim.lr_scheduler.MultiStepLR(rebuilt, milestones=[1], gamma=0.2)
    carry_optimizer_state(optimizer, scheduler, rebuilt, rescheduled)
    assert rebuilt.param_groups[0]["lr"] == pytest.approx(0.02) and rescheduled.last_epoch == 1
    kept = next(model.decoder.parameters())
    assert torch.equal(rebuilt.state[kept]["momentum_buffer"], optimizer.state[kept]["momentum_buffer"])

    before = {name: p.detach().clone() for name, p in model.encoder.named_parameters()}
    snapshot = copy.deepcopy(model)
    one_step(snapshot, stale)  # B10: the stale optimiser steps nothing of the pruned encoder
    assert all(torch.equal(p, before[name]) for name, p in snapshot.encoder.named_parameters())
    one_step(model, rebuilt)
    moved = [name for name, p in model.encoder.named_parameters() if not torch.equal(p, before[name])]
    assert sorted(moved) == sorted(before)  # every encoder parameter, the pruned convs' included


def test_a_pruned_bundle_round_trips_and_the_attacker_inverts_its_real_features(tmp_path: Path) -> None:
    model = trained_model()
    prune_edge(model, 0.25)
    save_bundle(tmp_path / "b", model, noise_std=0.1, dataset=DIGITS,
                defenses=[PatrolDefense(weight=1.0, prune_epoch=1, prune_ratio=0.25, ssim_threshold=0.5).record()])
    manifest, encoder = load_encoder(tmp_path / "b")
    _, decoder = load_decoder(tmp_path / "b")
    assert manifest.model.front_conv and manifest.model.edge_channels == (12, 24) and manifest.model == model.config
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(decoder(encoder(x)), model.eval()(x))
    images = torch.rand(20, 1, 32, 32)
    features = compute_feature_set(encoder, images)
    split = build_attack_split("infer", features, features, val_fraction=0.2)
    inversion = inversion_config_for(split, num_blocks=0, channels=8)
    assert (inversion.feature_channels, inversion.feature_size) == manifest.feature_shape[:2] == (8, 8)
    assert InversionNetwork(inversion)(split.fit.features).shape == split.fit.images.shape


def test_the_spec_records_every_field_and_runs_resolve_the_pruning() -> None:
    defense = parse_defense("patrol:0.5,prune_epoch=3,prune_ratio=0.1,proxy_channels=8,pretrain_epochs=1")
    assert defense.record() == {"name": "patrol", "weight": 0.5, "prune_epoch": 3, "prune_ratio": 0.1,
                                "ssim_threshold": None, "pretrain_epochs": 1, "proxy_blocks": 4,
                                "proxy_channels": 8, "proxy_lr": 1e-3}
    stack = build_defenses(TrainConfig(dataset="digits", noise_std=0.1, defenses=("patrol:0.5",), cem_lambda=0.0))
    patrol = stack.defenses[-1]
    assert isinstance(patrol, PatrolDefense) and patrol.ssim_threshold == 0.5  # digits' ResSFL threshold
    model = stack.configure_model(SplitModelConfig())
    assert model.front_conv
    resolved = stack.resolved(240, model).defenses[-1]
    assert isinstance(resolved, PatrolDefense) and (resolved.prune_epoch, resolved.prune_ratio) == (180, 0.055)
    with pytest.raises(ConfigError, match="prune_epoch <= the run's 2 epochs"):
        DefenseStack((parse_defense("patrol:0.5,prune_epoch=3"),)).resolved(2, model)
    with pytest.raises(ConfigError, match="ressfl or patrol"):
        DefenseStack((parse_defense("patrol:0.5"), parse_defense("ressfl:0.5")))
    with pytest.raises(ConfigError, match="expected a bottleneck with patrol"):
        parse_defense("patrol:0.5").configure_model(SplitModelConfig(bottleneck_channels=None))
    assert parse_defense("patrol:0.5").configure_model(SplitModelConfig(arch="resnet20", image_size=64)).front_conv
    with pytest.raises(ConfigError, match="prune_ratio in"):
        parse_defense("patrol:0.5,prune_ratio=1")


@pytest.mark.slow
def test_a_short_digits_run_prunes_keeps_training_and_every_party_rebuilds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pruned: list[tuple[SplitModel, dict[str, torch.Tensor]]] = []

    def prune_and_remember(model: SplitModel, ratio: float) -> SplitModelConfig:
        config = prune_edge(model, ratio)
        pruned.append((model, {k: v.clone() for k, v in model.encoder.state_dict().items()}))
        return config

    monkeypatch.setattr(training.defenses, "prune_edge", prune_and_remember)
    spec = "patrol:0.5,prune_epoch=2,pretrain_epochs=1,proxy_blocks=0,proxy_channels=8"
    result = train(TrainConfig(dataset="digits", width=0.125, epochs=2, noise_std=0.1, cem_lambda=0.0, seed=1,
                               progress=False, device="cpu", defenses=(spec,), out_dir=tmp_path / "patrol"))
    (model, at_pruning), = pruned
    record = result.manifest.defenses[-1]
    assert record["name"] == "patrol" and record["prune_epoch"] == 2 and record["ssim_threshold"] == 0.5
    assert 0 < record["prune_ratio"] < 1 and result.history[-1]["proxy_ssim"] > 0
    manifest, encoder = load_encoder(result.bundle)
    _, decoder = load_decoder(result.bundle)
    assert manifest.model.front_conv and manifest.model.edge_channels == model.config.edge_channels
    assert encoder_parameters(manifest.model) <= encoder_parameters(
        SplitModelConfig(width=0.125, in_channels=1, mean=manifest.model.mean, std=manifest.model.std))
    trained = encoder.state_dict()
    assert all(not torch.equal(trained[k], v) for k, v in at_pruning.items() if k.endswith("weight"))  # B10
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(decoder(encoder(x)), model.eval()(x))  # the trained model, rebuilt from the manifest
    edge = EncoderRuntime(result.bundle, seed=0)
    assert tuple(edge.encode(x).shape[1:]) == manifest.feature_shape == (8, 8, 8)
    audit = run_audit(AuditSpec(bundle_dir=result.bundle, epochs=1, device="cpu", network_channels=8,
                                network_blocks=0))
    assert audit.details["defenses"][-1] == record
