"""Split parity and geometry of the split VGG11-BN-SGM."""

from __future__ import annotations

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


def test_config_round_trips_through_dict() -> None:
    config = SplitModelConfig(cut_layer=3, width=0.5, in_channels=1, num_classes=7, mean=(0.3,), std=(0.2,))
    assert SplitModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"arch": "resnet"}, "expected arch"), ({"cut_layer": 13}, "cut_layer"), ({"width": 0}, "width"),
     ({"in_channels": 1}, "normalisation values")],
)
def test_invalid_config_says_what_was_expected(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SplitModelConfig(**kwargs)
