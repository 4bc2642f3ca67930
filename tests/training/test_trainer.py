"""End-to-end training runs on digits (tiny width, two epochs): determinism and the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from cem.bundle import load_bundle
from cem.data import load_dataset
from cem.errors import ConfigError
from cem.manifest import Manifest
from cem.obfuscation import ObfuscationConfig
from training import TrainConfig, TrainResult, train
from training.cem_plugin import CEMConfig
from training.loops import evaluate
from training.trainer import LOG_FILE

TINY = {"dataset": "digits", "width": 0.125, "epochs": 2, "cem_lambda": 8.0, "noise_std": 0.1,
        "defenses": ("dropout:0.1", "distcorr:0.1"), "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    root = tmp_path_factory.mktemp("train")
    return {
        name: train(TrainConfig(out_dir=root / name, seed=seed, **TINY))
        for name, seed in (("a", 3), ("b", 3), ("other", 4))
    }


def test_same_seed_gives_identical_weights_and_metrics(runs: dict[str, TrainResult]) -> None:
    a, b = runs["a"], runs["b"]
    assert a.model_id == b.model_id  # derived from the sha256 of both weight files
    assert a.metrics == b.metrics
    timings = {"epoch_seconds", "epoch_cpu_seconds"}  # the only fields two identical runs may differ in
    strip = [{k: v for k, v in r.items() if k not in timings} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k not in timings} for r in b.history]
    assert all(r["epoch_cpu_seconds"] > 0 for r in a.history)
    assert runs["other"].model_id != a.model_id


def test_bundle_records_everything_the_other_parts_need(runs: dict[str, TrainResult]) -> None:
    result = runs["a"]
    manifest, model = load_bundle(result.bundle)
    assert manifest.model_id == result.model_id and manifest.noise_std == 0.1
    assert manifest.defenses == [{"name": "noise", "std": 0.1}, {"name": "bottleneck", "channels": 8},
                                 {"name": "dropout", "p": 0.1}, {"name": "distcorr", "weight": 0.1}]
    assert manifest.cem is not None and manifest.cem.lam == 8.0 and manifest.cem.k == 3
    assert manifest.cem.lambda_units == manifest.cem.units == "paper" and manifest.cem.lr_coupling == "ref"
    assert manifest.cem.loss_form == "paper_diag" and manifest.cem.evaluate_on == "clean"
    assert (manifest.cem.noise_std, manifest.cem.image_dim) == (0.1, 1 * 32 * 32)
    metrics = manifest.metrics
    for value in (metrics.accuracy, metrics.entropy_bound, metrics.xi_relative, metrics.information_bound,
                  metrics.xi_estimate, metrics.entropy_x_estimate, metrics.native_dim):
        assert isinstance(value, float)
    assert metrics.entropy_bound == pytest.approx(-metrics.information_bound)  # type: ignore[operator]
    assert manifest.training["seed"] == 3 and manifest.training["epochs"] == 2
    assert manifest.training["distributed"] == {"world_size": 1, "backend": None, "batch_size_per_process": 128}
    assert (manifest.dataset.name, manifest.dataset.native_size, manifest.feature_shape) == ("digits", 8, (8, 8, 8))
    test_set, _ = load_dataset("digits", "test")
    config = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    again = evaluate(model, DataLoader(test_set, batch_size=128), config, torch.Generator().manual_seed(3 + 3),
                     torch.device("cpu"))
    assert again == manifest.metrics.accuracy == result.accuracy  # measured with noise and dropout on


def test_manifest_json_keeps_its_keys_and_round_trips_byte_for_byte(runs: dict[str, TrainResult]) -> None:
    text = (Path(runs["a"].bundle) / "manifest.json").read_text()
    raw = json.loads(text)
    assert {"accuracy", "entropy_bound", "mse_bound_xi", "mse_bound_xi_estimate", "native_dim"} <= set(raw["metrics"])
    assert not {"xi_relative", "xi_estimate"} & set(raw["metrics"])  # the typed names never reach the disk
    assert raw["cem"] == {**CEMConfig(lam=8.0).to_dict(), "noise_std": 0.1, "image_dim": 1 * 32 * 32}
    assert raw["dataset"] == load_dataset("digits", "train")[1].to_dict()
    assert json.dumps(Manifest.from_dict(raw).to_dict(), indent=2, sort_keys=True) + "\n" == text


def test_epoch_log_has_one_json_line_per_epoch_and_cem_starts_after_warmup(runs: dict[str, TrainResult]) -> None:
    lines = [json.loads(line) for line in (Path(runs["a"].bundle) / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    # paper units: the weight is λ·0.001/lr (reference coupling) at the epoch's lr
    assert lines[0]["cem_weight"] == 0.0 and lines[1]["cem_loss"] > 0
    assert lines[1]["cem_weight"] == pytest.approx(8.0 * 0.001 / lines[1]["lr"])
    for record in lines:
        assert {"test_accuracy", "train_loss", "entropy_bound", "mse_bound_xi", "lr"} <= set(record)


def test_cem_without_noise_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="noise-std > 0 with CEM"):
        train(TrainConfig(out_dir=tmp_path, noise_std=0.0, cem_lambda=1.0, epochs=1, progress=False))
