"""PATROL's edge in the model record (``front_conv``, ``edge_channels``), and bundles of the format before it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cem.bundle import load_bundle, save_bundle
from cem.errors import ConfigError
from cem.models import SplitModel, SplitModelConfig

# A model record exactly as bundles were written before PATROL existed, and digests of the (key, shape)
# lists of the encoder and decoder state dicts that code built from it (computed at the commit before).
OLD_RECORD = {"arch": "vgg11_bn_sgm", "cut_layer": 4, "bottleneck_channels": 8, "width": 0.125, "in_channels": 1,
              "image_size": 32, "num_classes": 10, "mean": [0.3], "std": [0.3]}
OLD_SHAPES = {"encoder": (18, "f7144fec4b02083a"), "decoder": (50, "00fc541f5d6fbfc8")}
DIGITS = {"name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 32, "mean": [0.3], "std": [0.3],
          "class_names": [str(i) for i in range(10)]}


def shape_digest(module: nn.Module) -> tuple[int, str]:
    shapes = [(k, list(v.shape)) for k, v in module.state_dict().items()]
    return len(shapes), hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def test_an_existing_format_vgg_manifest_loads_and_builds_the_same_modules(tmp_path: Path) -> None:
    config = SplitModelConfig.from_dict(OLD_RECORD)
    assert not config.front_conv and config.edge_channels is None
    assert config.to_dict() == OLD_RECORD  # no new keys in the record of a model without PATROL
    torch.manual_seed(0)
    model = SplitModel(config).eval()
    assert shape_digest(model.encoder) == OLD_SHAPES["encoder"]
    assert shape_digest(model.decoder) == OLD_SHAPES["decoder"]
    save_bundle(tmp_path / "b", model, noise_std=0.1, dataset=DIGITS)
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert raw["model"] == OLD_RECORD
    manifest, loaded = load_bundle(tmp_path / "b")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert manifest.model == config


def test_front_conv_and_edge_channels_round_trip_and_build_exactly_that_edge() -> None:
    config = SplitModelConfig(width=0.125, in_channels=1, mean=(0.3,), std=(0.3,), front_conv=True,
                              edge_channels=[6, 13])  # type: ignore[arg-type]  # a list is taken as a tuple
    record = config.to_dict()
    assert record == {**OLD_RECORD, "front_conv": True, "edge_channels": [6, 13]}
    assert SplitModelConfig.from_dict(json.loads(json.dumps(record))) == config
    model = SplitModel(config)
    convs = [m for m in model.encoder.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 2), (2, 6), (6, 13)]  # front conv 16·0.125
    assert model.encoder.bottleneck.in_channels == 13 == config.encoder_out_channels  # type: ignore[union-attr]
    assert model.decoder.expand.out_channels == 16 == config.decoder_in_channels  # type: ignore[union-attr]
    assert tuple(model.encoder(torch.rand(2, 1, 32, 32)).shape[1:]) == config.feature_shape == (8, 8, 8)


def test_resnet20_edge_channels_are_the_edge_blocks_inner_widths_and_round_trip() -> None:
    config = SplitModelConfig(arch="resnet20", image_size=64, width=0.25, front_conv=True,
                              edge_channels=(5, 6, 7, 9))
    assert SplitModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = SplitModel(config)
    convs = [(m.in_channels, m.out_channels) for m in model.encoder.features.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(3, 4), (4, 4), (4, 5), (5, 8), (8, 6), (6, 8), (8, 7), (7, 8), (8, 9), (9, 16)]
    assert config.encoder_out_channels == config.decoder_in_channels == 16  # the block outputs stay whole
    assert tuple(model.encoder(torch.rand(2, 3, 64, 64)).shape[1:]) == config.feature_shape == (8, 16, 16)


def test_patrol_encoder_sizes_match_the_reference() -> None:
    def size(**kw: object) -> int:
        return sum(p.numel() for p in SplitModel(SplitModelConfig(**kw)).encoder.parameters())  # type: ignore[arg-type]

    assert size() == 85_256  # reference_notes §1.1, cut 4
    assert size(front_conv=True) == 93_224  # reference_notes §4.6, before pruning


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet20", "image_size": 64, "edge_channels": (32, 32, 64)}, "edge_channels of 4 positive ints"),
        ({"edge_channels": (64,)}, "edge_channels of 2 positive ints"),
        ({"edge_channels": (64, 0)}, "edge_channels of 2 positive ints"),
        ({"edge_channels": (60, 120), "bottleneck_channels": None}, "edge to end at the cloud's 128 channels"),
    ],
)
def test_edge_shapes_that_cannot_be_built_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SplitModelConfig(**kwargs)


def test_a_front_conv_that_is_not_a_json_boolean_is_refused() -> None:
    with pytest.raises(ConfigError, match="complete model config"):
        SplitModelConfig.from_dict({**OLD_RECORD, "front_conv": "false"})
