"""Each defense changes what the decoder consumes; the registry and records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cem.errors import ConfigError, UnknownNameError
from cem.models import SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig
from training.config import TrainConfig
from training.defenses import DefenseStack, create_defense, distance_correlation, parse_defense
from training.loops import train_one_epoch
from training.trainer import build_defenses


def decoder_inputs(specs: tuple[str, ...], noise_std: float = 0.0, steps: int = 1, bottleneck: int | None = 8):
    """Run real training steps; return (clean encoder output, tensor the decoder consumed, model)."""
    stack = build_defenses(TrainConfig(noise_std=noise_std, defenses=specs, bottleneck=bottleneck))
    torch.manual_seed(0)
    config = stack.configure_model(SplitModelConfig(width=0.125, in_channels=1, mean=(0.3,), std=(0.3,)))
    model = SplitModel(config)
    data = TensorDataset(torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 10)
    seen: dict[str, torch.Tensor] = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("clean", o.detach().clone()))
    model.decoder.register_forward_pre_hook(lambda m, i: seen.__setitem__("sent", i[0].detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        train_one_epoch(model, DataLoader(data, batch_size=32), optimizer, obfuscation=stack.obfuscation(),
                        defenses=stack, cem=None, cem_weight=0.0, generator=torch.Generator().manual_seed(2),
                        device=torch.device("cpu"))
    return seen["clean"], seen["sent"], model


def test_without_defenses_the_decoder_sees_the_clean_features() -> None:
    clean, sent, _ = decoder_inputs(())
    assert torch.equal(clean, sent)


def test_noise_reaches_the_decoder_with_the_given_std() -> None:
    clean, sent, _ = decoder_inputs((), noise_std=0.1)
    assert float((sent - clean).std()) == pytest.approx(0.1, rel=0.05)


def test_dropout_zeroes_a_fraction_p_of_what_the_decoder_sees() -> None:
    clean, sent, _ = decoder_inputs(("dropout:0.3",))
    zeroed = sent == 0
    assert float(zeroed.float().mean()) == pytest.approx(0.3, abs=0.03)
    assert torch.equal(sent[~zeroed], clean[~zeroed])  # no 1/(1-p) rescaling


def test_topk_prunes_the_smallest_values_of_each_sample() -> None:
    clean, sent, _ = decoder_inputs(("topk:0.5",))
    per_sample_zeros = (sent == 0).flatten(1).float().mean(1)
    assert bool((per_sample_zeros >= 0.5).all())
    kept = sent.flatten(1).masked_fill(sent.flatten(1) == 0, float("inf")).min(1).values
    dropped = clean.flatten(1).masked_fill(sent.flatten(1) != 0, float("-inf")).max(1).values
    assert bool((kept >= dropped).all())


def test_bottleneck_sets_the_channels_the_decoder_receives() -> None:
    _, wide, _ = decoder_inputs(())
    clean, narrow, model = decoder_inputs((), bottleneck=3)
    assert wide.shape[1:] == (8, 8, 8) and narrow.shape[1:] == (3, 8, 8) and torch.equal(clean, narrow)
    assert model.config.bottleneck_channels == 3
    stack = DefenseStack((create_defense("bottleneck", channels=4),))
    assert stack.configure_model(model.config).feature_shape == (4, 8, 8)
    assert stack.records() == [{"name": "bottleneck", "channels": 4}]


def test_bottleneck_none_sends_the_raw_vgg_features_and_records_null() -> None:
    clean, sent, model = decoder_inputs(("dropout:0.2",), bottleneck=None)
    assert sent.shape[1:] == (16, 8, 8) == model.config.feature_shape  # 128 · 0.125 channels at cut 4
    assert model.config.bottleneck_channels is None and float(clean.min()) >= 0.0
    stack = build_defenses(TrainConfig(noise_std=0.0, bottleneck=None, defenses=("dropout:0.2",)))
    assert stack.records() == [{"name": "bottleneck", "channels": None}, {"name": "dropout", "p": 0.2}]
    assert type(parse_defense("bottleneck:4").channels) is int  # "int | None" still parses as an int


def test_noise_without_bottleneck_is_refused_where_sigma_is_final() -> None:
    message = (r"expected --noise-std 0 with --bottleneck none, got 0\.1: "
               r"Gaussian noise is only meaningful on the Sigmoid")
    with pytest.raises(ConfigError, match=message):
        build_defenses(TrainConfig(noise_std=0.1, bottleneck=None, cem_lambda=0.0))
    with pytest.raises(ConfigError, match=message):
        DefenseStack((create_defense("bottleneck", channels=None), create_defense("noise", std=0.1)))
    with pytest.raises(ConfigError, match="expected bottleneck channels >= 1 or none, got 0"):
        create_defense("bottleneck", channels=0)


def test_distcorr_changes_the_features_the_decoder_is_trained_on() -> None:
    _, before, _ = decoder_inputs((), steps=3)
    _, after, _ = decoder_inputs(("distcorr:5.0",), steps=3)
    assert not torch.allclose(before, after)


def test_combined_defenses_compose_in_the_wire_order() -> None:
    stack = build_defenses(TrainConfig(noise_std=0.1, defenses=("dropout:0.2", "topk:0.5", "distcorr:0.3")))
    assert stack.records() == [
        {"name": "noise", "std": 0.1}, {"name": "bottleneck", "channels": 8}, {"name": "dropout", "p": 0.2},
        {"name": "topk", "ratio": 0.5}, {"name": "distcorr", "weight": 0.3},
    ]
    assert stack.obfuscation() == ObfuscationConfig(noise_std=0.1, dropout_p=0.2, topk_ratio=0.5)
    assert ObfuscationConfig.from_records(0.1, stack.records()) == stack.obfuscation()


def test_registry_errors_say_what_was_expected() -> None:
    with pytest.raises(UnknownNameError, match=r"expected a defense in \[.*dropout.*\].*'blur:1'"):
        parse_defense("blur:1")
    with pytest.raises(ConfigError, match="expected 'dropout:<p>'"):
        parse_defense("dropout")
    with pytest.raises(ConfigError, match="dropout p in"):
        parse_defense("dropout:1.5")
    with pytest.raises(ConfigError, match="at most once"):
        build_defenses(TrainConfig(defenses=("dropout:0.1", "dropout:0.2")))
    with pytest.raises(ConfigError, match="--noise-std"):
        build_defenses(TrainConfig(defenses=("noise:0.2",)))
    assert parse_defense("bottleneck:4").record() == {"name": "bottleneck", "channels": 4}


def independent_dcor(a: np.ndarray, b: np.ndarray) -> float:
    def centred(m: np.ndarray) -> np.ndarray:
        d = np.sqrt(((m[:, None, :] - m[None, :, :]) ** 2).sum(-1))
        return d - d.mean(0) - d.mean(1)[:, None] + d.mean()
    A, B = centred(a), centred(b)
    return float(np.sqrt((A * B).mean()) / np.sqrt(np.sqrt((A * A).mean() * (B * B).mean())))


def test_distance_correlation_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 6))
    b = np.tanh(a[:, :3]) + 0.3 * rng.standard_normal((40, 3))
    value = distance_correlation(torch.from_numpy(a), torch.from_numpy(b))
    assert float(value) == pytest.approx(independent_dcor(a, b), abs=1e-4)  # eps 1e-7 under each sqrt
    assert float(distance_correlation(torch.from_numpy(a), torch.from_numpy(2 * a + 1))) == pytest.approx(1.0, abs=1e-4)
