"""The TinyImageNet profile trains the paper's ResNet-20 split on files in the released TinyImageNet layout.

The profile is the paper's geometry (reference_notes §1.2, §3.1): ResNet-20 cut at entry 5, 64-px
images, 120 epochs with the lr divided by 5 after epochs 30, 60, 90 and 105, σ = 0.025 and λ = 16.
The runs here are one or two epochs at width 0.125 on 18 images.

With noise on, the trainer ends with the ``estimate`` kind of the bound, a Gaussian fit of the
training images: at 64 px that is a 12288² covariance and its log-determinant, about a minute on
a 2-core CPU whatever the number of images. So the fast run trains without noise (no bound), and
the run with the profile's σ and λ is marked slow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tinyimagenet_format import write_tinyimagenet
from torch.utils.data import DataLoader

from cem.bundle import load_bundle, load_decoder, load_encoder
from cem.data import load_dataset
from training import TrainConfig, train
from training.config import resolve_config
from training.trainer import LOG_FILE

WNIDS = ("n01443537", "n01629819", "n01641577")
TINY = {"dataset": "tinyimagenet", "width": 0.125, "batch_size": 6, "progress": False, "device": "cpu"}


@pytest.fixture()
def tiny_imagenet(tmp_path: Path) -> Path:
    return write_tinyimagenet(tmp_path / "tiny-imagenet-200", WNIDS, train_per_class=6, val_per_class=2)


def test_the_tinyimagenet_profile_is_the_papers_resnet20_schedule() -> None:
    config = resolve_config(TrainConfig(dataset="tinyimagenet"))
    assert (config.arch, config.cut_layer, config.epochs) == ("resnet20", 5, 120)
    assert config.milestones() == [30, 60, 90, 105]
    assert (config.noise_std, config.cem_lambda) == (0.025, 16.0)
    vgg = resolve_config(TrainConfig(dataset="tinyimagenet", arch="vgg11_bn_sgm"))
    assert (vgg.arch, vgg.cut_layer) == ("vgg11_bn_sgm", 4)  # the default cut follows the arch asked for
    assert resolve_config(TrainConfig(dataset="cifar10")).arch == "vgg11_bn_sgm"


def test_one_epoch_on_released_tinyimagenet_files_writes_a_resnet20_bundle(tmp_path: Path, tiny_imagenet: Path) -> None:
    result = train(TrainConfig(data_dir=tiny_imagenet, out_dir=tmp_path / "run", epochs=1, noise_std=0.0,
                               cem_lambda=0.0, **TINY))
    manifest = result.manifest
    assert (manifest.model.arch, manifest.model.cut_layer, manifest.model.image_size) == ("resnet20", 5, 64)
    assert manifest.feature_shape == (8, 16, 16) and manifest.dataset.class_names == WNIDS
    assert 0.0 <= result.accuracy <= 1.0
    _, model = load_bundle(result.bundle)
    _, encoder = load_encoder(result.bundle)  # what the edge loads: rebuilt from the manifest's arch
    _, decoder = load_decoder(result.bundle)  # and the cloud
    test, _ = load_dataset("tinyimagenet", "test", data_dir=tiny_imagenet)
    images = next(iter(DataLoader(test, batch_size=6)))[0]
    with torch.no_grad():
        assert torch.equal(decoder(encoder(images)), model(images))
    assert tuple(model(images).shape) == (6, 3)


def test_the_profile_with_its_noise_and_cem_trains_and_reports_the_bound(tmp_path: Path, tiny_imagenet: Path) -> None:
    settings = {**TINY, "batch_size": 18}
    result = train(TrainConfig(data_dir=tiny_imagenet, out_dir=tmp_path / "run", epochs=2, **settings))
    manifest = result.manifest
    assert manifest.noise_std == 0.025 and manifest.cem is not None and manifest.cem.lam == 16.0
    log = [json.loads(line) for line in (result.bundle / LOG_FILE).read_text().splitlines()]
    assert log[1]["cem_weight"] > 0 and math.isfinite(log[1]["cem_loss"]), "epoch 2 trains with L_C on 2048-d features"
    bound = manifest.metrics.information_bound
    assert bound is not None and math.isfinite(bound) and manifest.metrics.native_dim == 3 * 64 * 64


def test_patrol_on_resnet20_prunes_the_inner_channels_and_every_party_rebuilds_it(
    tmp_path: Path, tiny_imagenet: Path
) -> None:
    spec = "patrol:0.5,prune_epoch=2,pretrain_epochs=1,proxy_blocks=0,proxy_channels=4"
    result = train(TrainConfig(data_dir=tiny_imagenet, out_dir=tmp_path / "run", epochs=2, noise_std=0.0,
                               cem_lambda=0.0, defenses=(spec,), **TINY))
    model = result.manifest.model
    assert model.front_conv and model.edge_channels is not None and len(model.edge_channels) == 4
    widths = (4, 4, 4, 8)  # each edge block's inner width at width 0.125, before pruning
    assert all(c <= w for c, w in zip(model.edge_channels, widths, strict=True)) and model.edge_channels != widths
    record = result.manifest.defenses[-1]
    assert record["name"] == "patrol" and record["prune_epoch"] == 2 and record["ssim_threshold"] == 0.6
    assert result.history[-1]["proxy_ssim"] > 0
    _, full = load_bundle(result.bundle)
    _, encoder = load_encoder(result.bundle)
    _, decoder = load_decoder(result.bundle)
    test, _ = load_dataset("tinyimagenet", "test", data_dir=tiny_imagenet)
    images = next(iter(DataLoader(test, batch_size=6)))[0]
    with torch.no_grad():
        assert torch.equal(decoder(encoder(images)), full(images))
    assert tuple(encoder(images).shape[1:]) == result.manifest.feature_shape == (8, 16, 16)
