"""The decoding network of S.3 and the WGAN-GP critic (cem.models.inversion)."""

from __future__ import annotations

import pytest
import torch

from cem.errors import ConfigError
from cem.models import CriticConfig, InversionConfig, InversionNetwork, SplitModelConfig, WassersteinCritic


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_shape_has_711539_parameters() -> None:
    network = InversionNetwork(InversionConfig(feature_channels=8, feature_size=8, image_channels=3, image_size=32))
    assert count_parameters(network) == 711_539


@pytest.mark.parametrize(
    "feature_size,image_size,stages", [(8, 32, 2), (12, 48, 2), (16, 64, 2), (4, 32, 3), (16, 32, 1), (32, 32, 0)]
)
def test_upsampling_stages_follow_the_actual_shapes(feature_size: int, image_size: int, stages: int) -> None:
    config = InversionConfig(feature_channels=8, feature_size=feature_size, image_channels=1, image_size=image_size,
                             num_blocks=1, channels=8)
    assert config.upsampling_stages == stages
    with torch.no_grad():
        out = InversionNetwork(config).eval()(torch.randn(2, 8, feature_size, feature_size))
    assert out.shape == (2, 1, image_size, image_size)
    assert float(out.min()) > 0 and float(out.max()) < 1


def test_config_from_a_split_model_uses_its_feature_shape() -> None:
    split = SplitModelConfig(in_channels=1, width=0.25, mean=(0.5,), std=(0.5,))
    config = InversionConfig.for_features(split.feature_shape, 1, split.image_size, num_blocks=2, channels=16)
    assert (config.feature_channels, config.feature_size, config.upsampling_stages) == (8, 8, 2)


def test_depth_and_width_are_configurable() -> None:
    small = InversionNetwork(InversionConfig(num_blocks=1, channels=16))
    assert count_parameters(small) < count_parameters(InversionNetwork(InversionConfig())) / 20


def test_incompatible_shapes_are_rejected() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        InversionConfig(feature_size=8, image_size=40)
    with pytest.raises(ConfigError, match="power of two"):
        InversionConfig(feature_size=16, image_size=8)
    network = InversionNetwork(InversionConfig(num_blocks=0, channels=8))
    with pytest.raises(ConfigError, match=r"expected features of shape \(B, 8, 8, 8\)"):
        network(torch.randn(2, 4, 8, 8))


@pytest.mark.parametrize("channels,side", [(1, 32), (3, 32), (3, 48), (3, 64)])
def test_critic_gives_one_score_per_image(channels: int, side: int) -> None:
    critic = WassersteinCritic(CriticConfig(image_channels=channels, image_size=side, dim=8))
    scores = critic(torch.rand(3, channels, side, side))
    assert scores.shape == (3,)
    assert torch.isfinite(scores).all()


def test_critic_rejects_images_smaller_than_32() -> None:
    with pytest.raises(ConfigError, match="image_size >= 32"):
        CriticConfig(image_size=16)
