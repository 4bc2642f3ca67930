"""The reference's ResNet-20 (reference_notes §1.2) as a split model: parity at every cut, geometry, init.

``reference_forward`` writes the variant out with ``torch.nn.functional`` from the notes (5×5 stem,
stages of 32/64/128 channels each starting at stride 2, option-A shortcuts, global average pool and
a Linear), reading only the weights, so the split modules are checked against an independent
formulation and not only against themselves.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cem.errors import ConfigError
from cem.models import SplitModel, SplitModelConfig
from cem.models.split_resnet import BasicBlock, ZeroPadShortcut

SIDE = 64
# cut -> (H, W) of the features at 64 px: the stem keeps the side, each stage's first block halves it
SIDES = {1: 64, 2: 32, 3: 32, 4: 32, 5: 16, 6: 16, 7: 16, 8: 8, 9: 8}


def tiny_config(**kwargs: object) -> SplitModelConfig:
    base: dict = {"arch": "resnet20", "width": 0.125, "image_size": SIDE, "num_classes": 5,
                  "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    return SplitModelConfig(**{**base, **kwargs})


def randomise_batch_norm(model: nn.Module, seed: int) -> None:
    """Non-trivial eval-mode BN (default running stats would make every BN almost the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
        bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def reference_forward(model: SplitModel, x: torch.Tensor) -> torch.Tensor:
    """x (B, 3, S, S) in [0, 1] -> logits, the notes' ResNet-20 in functional form (no bottleneck)."""
    enc, dec = model.encoder, model.decoder
    x = (x - enc.normalize.mean) / enc.normalize.std
    stem, *blocks = [*enc.features, *list(dec.features)[:-1]]  # the cloud ends with its pooling
    x = F.relu(_bn(F.conv2d(x, stem[0].weight, stride=1, padding=2), stem[1]))
    for index, block in enumerate(blocks):
        stride = 2 if index % 3 == 0 else 1
        y = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn1))
        y = _bn(F.conv2d(y, block.conv2.weight, padding=1), block.bn2)
        shortcut = x[:, :, ::stride, ::stride]
        missing = y.shape[1] - shortcut.shape[1]
        shortcut = torch.cat([shortcut, shortcut.new_zeros(shortcut.shape[0], missing, *shortcut.shape[2:])], 1)
        x = F.relu(y + shortcut)
    return F.linear(x.mean(dim=(2, 3)), dec.classifier.weight, dec.classifier.bias)


@pytest.mark.parametrize("cut", sorted(SIDES))
def test_encoder_then_decoder_equals_the_unsplit_network_at_every_cut(cut: int) -> None:
    torch.manual_seed(cut)
    config = tiny_config(cut_layer=cut)
    model = SplitModel(config)
    randomise_batch_norm(model, seed=cut)
    model.eval()
    x = torch.rand(2, 3, SIDE, SIDE)
    with torch.no_grad():
        z = model.encoder(x)
        split = model.decoder(z)
        whole = model.unsplit()(x)
    assert tuple(z.shape[1:]) == config.feature_shape == (8, SIDES[cut], SIDES[cut])
    assert torch.equal(split, whole)
    assert isinstance(model.encoder.activation, nn.Sigmoid)  # the Sigmoid at the cut, as for VGG
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0  # (float32 rounds a saturated Sigmoid to 1)


def test_without_bottleneck_every_cut_computes_the_reference_resnet20() -> None:
    """The cut only moves the boundary: the same weights give the notes' network's logits at every cut."""
    torch.manual_seed(0)
    first = SplitModel(tiny_config(cut_layer=1, bottleneck_channels=None))
    randomise_batch_norm(first, seed=1)
    weights = [*first.encoder.state_dict().values(), *first.decoder.state_dict().values()]
    x = torch.rand(3, 3, SIDE, SIDE)
    with torch.no_grad():
        expected = reference_forward(first.eval(), x)
        for cut in sorted(SIDES):
            model = SplitModel(tiny_config(cut_layer=cut, bottleneck_channels=None)).eval()
            keys = [(half, key) for half in ("encoder", "decoder") for key in getattr(model, half).state_dict()]
            assert len(keys) == len(weights)
            for (half, key), value in zip(keys, weights, strict=True):
                getattr(model, half).state_dict()[key].copy_(value)
            z = model.encoder(x)
            assert z.shape[1:] == (model.config.encoder_out_channels, SIDES[cut], SIDES[cut])
            assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
            torch.testing.assert_close(model.decoder(z), expected, rtol=1e-5, atol=1e-5)


def test_the_reference_geometry_at_width_one() -> None:
    torch.manual_seed(0)
    config = SplitModelConfig(arch="resnet20", image_size=SIDE, num_classes=200)
    model = SplitModel(config)
    assert config.cut_layer == 5 and config.feature_shape == (8, 16, 16)  # 2048 values per image
    assert sum(p.numel() for p in model.encoder.parameters()) == 112_472  # reference_notes §1.2 [ARITH]
    stem_conv = model.encoder.features[0][0]
    assert (stem_conv.kernel_size, stem_conv.out_channels, stem_conv.bias) == ((5, 5), 16, None)
    blocks = [*model.encoder.features[1:], *list(model.decoder.features)[:-1]]
    assert [b.conv1.out_channels for b in blocks] == [32] * 3 + [64] * 3 + [128] * 3
    assert [b.conv1.stride[0] for b in blocks] == [2, 1, 1] * 3  # every stage starts at stride 2, the first too
    assert isinstance(model.decoder.features[-1], nn.AdaptiveAvgPool2d)
    assert (model.decoder.classifier.in_features, model.decoder.classifier.out_features) == (128, 200)
    last = blocks[-1].conv2.weight.detach()  # He-normal, std sqrt(2 / (3·3·128)), as the reference initialises
    assert float(last.std()) == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.03)


def test_option_a_shortcut_subsamples_and_appends_zero_channels() -> None:
    x = torch.rand(2, 3, 7, 7)
    y = ZeroPadShortcut(3, 5, stride=2)(x)
    assert y.shape == (2, 5, 4, 4)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2]) and not y[:, 3:].any()
    assert not list(BasicBlock(3, 5, stride=2).shortcut.parameters())  # parameter-free
    assert isinstance(BasicBlock(4, 4, stride=1).shortcut, nn.Identity)


def test_the_bottleneck_option_works_at_the_resnet_cut() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, SIDE, SIDE)
    narrow = SplitModel(tiny_config(bottleneck_channels=4)).eval()
    assert tuple(narrow.encoder(x).shape) == (2, 4, 16, 16) and narrow.decoder.expand.out_channels == 8
    raw = SplitModel(tiny_config(bottleneck_channels=None)).eval()  # No_defense: 64·0.125 trunk channels at cut 5
    assert raw.config.feature_shape == (8, 16, 16) and not raw.config.has_bottleneck
    keys = [*raw.encoder.state_dict(), *raw.decoder.state_dict()]
    assert not any(key.startswith(("bottleneck", "expand")) for key in keys)


def test_config_round_trips_and_says_which_cuts_exist() -> None:
    config = tiny_config(cut_layer=8, bottleneck_channels=None)
    assert SplitModelConfig.from_dict(config.to_dict()) == config
    assert tiny_config().to_dict()["cut_layer"] == 5  # the default is written out, never left implicit
    for cut in (0, 10):
        with pytest.raises(ConfigError, match=rf"expected cut_layer in 1..9 for arch 'resnet20', got {cut}"):
            tiny_config(cut_layer=cut)
    with pytest.raises(ConfigError, match=r"expected arch in \['resnet20', 'vgg11_bn_sgm'\], got 'resnet18'"):
        tiny_config(arch="resnet18")
