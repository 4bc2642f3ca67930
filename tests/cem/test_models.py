"""Split parity and geometry of the split VGG11-BN-SGM."""

from __future__ import annotations

import json

import pytest
import torch

from cem.errors import ConfigError
from cem.models import SplitModel, SplitModelConfig


@pytest.mark.parametrize(
    ("cut_layer", "in_channels", "expected_shape"),
    [(4, 1, (8, 8, 8)), (4, 3, (8, 8, 8)), (2, 3, (8, 16, 16)), (5, 3, (8, 8, 8))],
)
def test_decoder_of_encoder_equals_unsplit_forward(cut_layer: int, in_channels: int, expected_shape: tuple) -> None:
    torch.manual_seed(0)
    config = SplitModelConfig(cut_layer=cut_layer, width=0.125, in_channels=in_channels,
                              mean=(0.4,) * in_channels, std=(0.3,) * in_channels)
    model = SplitModel(config).eval()
    x = torch.rand(3, in_channels, 32, 32)
    with torch.no_grad():
        z = model.encoder(x)
        split = model.decoder(z)
        whole = model.unsplit()(x)
    assert tuple(z.shape[1:]) == expected_shape == config.feature_shape
    assert torch.equal(split, whole)
    assert float(z.min()) > 0.0 and float(z.max()) < 1.0  # Sigmoid-bounded features


def test_bottleneck_channels_set_feature_shape() -> None:
    config = SplitModelConfig(bottleneck_channels=4, width=0.125)
    z = SplitModel(config).eval().encoder(torch.rand(2, 3, 32, 32))
    assert tuple(z.shape) == (2, 4, 8, 8)


@pytest.mark.parametrize(("cut_layer", "expected_shape"), [(4, (16, 8, 8)), (2, (8, 16, 16)), (5, (32, 8, 8))])
def test_without_bottleneck_the_edge_sends_the_raw_vgg_features(cut_layer: int, expected_shape: tuple) -> None:
    """No_defense baseline: the first ``cut_layer`` VGG entries and nothing else on either side of the cut."""
    torch.manual_seed(0)
    config = SplitModelConfig(cut_layer=cut_layer, bottleneck_channels=None, width=0.125)
    model = SplitModel(config).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        z = model.encoder(x)
        split = model.decoder(z)
        whole = model.unsplit()(x)
    assert tuple(z.shape[1:]) == expected_shape == config.feature_shape
    assert config.feature_shape[0] == config.encoder_out_channels and not config.has_bottleneck
    assert torch.equal(split, whole)
    assert float(z.min()) >= 0.0  # ReLU/max-pool output, not squashed into (0, 1)
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in model.modules())
    assert isinstance(model.decoder.features[0], torch.nn.Conv2d)  # VGG entry cut_layer, not an expansion conv
    assert model.decoder.features[0].in_channels == config.encoder_out_channels
    keys = [*model.encoder.state_dict(), *model.decoder.state_dict()]
    assert not any(k.startswith(("bottleneck", "expand")) for k in keys)


def test_no_bottleneck_is_null_in_the_dict_and_round_trips() -> None:
    config = SplitModelConfig(bottleneck_channels=None, width=0.25, in_channels=1, mean=(0.3,), std=(0.2,))
    data = config.to_dict()
    assert data["bottleneck_channels"] is None and '"bottleneck_channels": null' in json.dumps(data)
    assert SplitModelConfig.from_dict(json.loads(json.dumps(data))) == config
    assert config.feature_shape == (32, 8, 8)  # 128 · 0.25 channels at cut 4


def test_config_round_trips_through_dict() -> None:
    config = SplitModelConfig(cut_layer=3, width=0.5, in_channels=1, num_classes=7, mean=(0.3,), std=(0.2,))
    assert SplitModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"arch": "resnet"}, "expected arch"), ({"cut_layer": 13}, "cut_layer"), ({"width": 0}, "width"),
     ({"in_channels": 1}, "normalisation values"), ({"bottleneck_channels": 0}, "bottleneck_channels >= 1 or None"),
     ({"bottleneck_channels": -2}, "bottleneck_channels >= 1 or None")],
)
def test_invalid_config_says_what_was_expected(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SplitModelConfig(**kwargs)


def test_vgg_weight_names_are_those_every_bundle_on_disk_uses() -> None:
    """The arch registry moved the VGG layers; their safetensors keys must not move with them."""
    model = SplitModel(SplitModelConfig(width=0.125))
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert list(model.encoder.state_dict()) == [
        "normalize.mean", "normalize.std", "features.0.weight", "features.0.bias", *(f"features.1.{k}" for k in bn),
        "features.4.weight", "features.4.bias", *(f"features.5.{k}" for k in bn),
        "bottleneck.weight", "bottleneck.bias",
    ]
    assert sorted({key.rsplit(".", 1)[0] for key in model.decoder.state_dict()}) == [
        "classifier.1", "classifier.4", "classifier.6", "expand", *(f"features.{i}" for i in (0, 1, 10, 11, 14, 15)),
        *(f"features.{i}" for i in (17, 18, 3, 4, 7, 8)),
    ]
