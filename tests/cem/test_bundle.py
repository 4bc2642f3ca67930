"""Bundle round trip, and tampering/truncation detection, on real files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from cem.bundle import load_bundle, load_decoder, load_encoder, load_manifest, save_bundle
from cem.data import DatasetInfo
from cem.errors import BundleFormatError, BundleIntegrityError, BundleNotFoundError, ConfigError
from cem.manifest import CEMRecord, MetricsRecord
from cem.models import SplitModel, SplitModelConfig


@pytest.fixture()
def bundle(tmp_path: Path) -> tuple[Path, SplitModel]:
    torch.manual_seed(0)
    model = SplitModel(SplitModelConfig(width=0.125, in_channels=1, mean=(0.3,), std=(0.3,))).eval()
    save_bundle(
        tmp_path / "b", model, noise_std=0.1,
        dataset={"name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 32,
                 "mean": [0.3], "std": [0.3], "class_names": [str(i) for i in range(10)]},
        defenses=[{"name": "noise", "std": 0.1}, {"name": "dropout", "p": 0.2}],
        cem={"lam": 1.0, "k": 3}, metrics={"accuracy": 0.5, "entropy_bound": -10.0}, training={"epochs": 1},
    )
    return tmp_path / "b", model


def test_round_trip_restores_both_halves_and_the_manifest(bundle: tuple[Path, SplitModel]) -> None:
    path, model = bundle
    manifest, loaded = load_bundle(path)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert manifest.model == model.config
    assert manifest.noise_std == 0.1 and manifest.defenses[1] == {"name": "dropout", "p": 0.2}
    assert manifest.cem == CEMRecord(lam=1.0, k=3)
    assert manifest.metrics == MetricsRecord(accuracy=0.5, entropy_bound=-10.0)
    assert manifest.dataset.name == "digits" and manifest.class_names == [str(i) for i in range(10)]
    raw = json.loads((path / "manifest.json").read_text())  # records written as they were given, nothing added
    assert raw["cem"] == {"lam": 1.0, "k": 3} and raw["metrics"] == {"accuracy": 0.5, "entropy_bound": -10.0}
    assert manifest.feature_shape == (8, 8, 8) and len(manifest.model_id) == 16


def test_edge_loads_without_the_decoder_file(bundle: tuple[Path, SplitModel]) -> None:
    path, model = bundle
    (path / "decoder.safetensors").unlink()
    _, encoder = load_encoder(path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(x), model.encoder(x))
    with pytest.raises(BundleNotFoundError, match="decoder weights"):
        load_decoder(path)


def test_flipped_byte_is_detected(bundle: tuple[Path, SplitModel]) -> None:
    path, _ = bundle
    weights = path / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="encoder.safetensors failed verification.*modified or truncated"):
        load_encoder(path)
    load_decoder(path)  # the other half is still usable


def test_truncated_file_is_detected(bundle: tuple[Path, SplitModel]) -> None:
    path, _ = bundle
    weights = path / "decoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BundleIntegrityError, match="modified or truncated"):
        load_bundle(path)


def test_edited_manifest_hash_is_detected(bundle: tuple[Path, SplitModel], tmp_path: Path) -> None:
    path, _ = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["encoder"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match="model_id does not match"):
        load_manifest(path)


def test_swapped_weights_from_another_bundle_are_detected(bundle: tuple[Path, SplitModel], tmp_path: Path) -> None:
    path, _ = bundle
    other = SplitModel(SplitModelConfig(width=0.125, in_channels=1, mean=(0.3,), std=(0.3,)))
    save_bundle(tmp_path / "other", other, noise_std=0.1, dataset=load_manifest(path).dataset)
    shutil.copy(tmp_path / "other" / "encoder.safetensors", path / "encoder.safetensors")
    with pytest.raises(BundleIntegrityError):
        load_encoder(path)


def test_missing_or_garbled_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleNotFoundError, match="expected a bundle manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(BundleFormatError, match="format_version 1, got 99"):
        load_manifest(tmp_path)


def test_same_weights_always_give_the_same_files_and_model_id(bundle: tuple[Path, SplitModel], tmp_path: Path) -> None:
    path, model = bundle
    first = load_manifest(path)
    ids = {save_bundle(tmp_path / f"again{i}", model, noise_std=0.1, dataset=first.dataset).model_id for i in range(6)}
    assert ids == {first.model_id}


def _rewrite_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, **changes}))


OLD_DATASET = {"name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 32, "mean": [0.3], "std": [0.3],
               "class_names": []}  # before the bound's estimate kind: no native_size, no quantisation_step


def test_a_manifest_written_the_old_way_still_loads(bundle: tuple[Path, SplitModel]) -> None:
    """Plain-dict era manifest: model config with ``extra``, no λ units, ξ under ``mse_bound_xi``."""
    path, model = bundle
    raw = json.loads((path / "manifest.json").read_text())
    _rewrite_manifest(
        path,
        model={**raw["model"], "extra": {}},
        dataset=OLD_DATASET,
        cem={"lam": 0.0075, "k": 3, "loss_form": "paper_diag", "evaluate_on": "clean", "lr_coupling": "none",
             "warmup_epochs": 1, "kmeans_iters": 25, "persist_updates": True, "ref_gain": 10.0, "ref_gamma": 0.01,
             "ref_tau": 0.125, "noise_std": 0.1, "image_dim": 1024},
        metrics={"accuracy": 0.9, "train_accuracy": 0.95, "information_bound": 90.0, "entropy_bound": -90.0,
                 "entropy_bound_per_dim": -90.0 / 1024, "mse_bound_xi": 0.0042},
    )
    manifest, loaded = load_bundle(path)
    assert manifest.model == model.config
    assert manifest.dataset == DatasetInfo(name="digits", num_classes=10, in_channels=1, image_size=32, mean=(0.3,),
                                           std=(0.3,))
    assert manifest.dataset.native_size is None and manifest.class_names == [str(i) for i in range(10)]
    assert manifest.cem is not None and manifest.cem.lam == 0.0075 and manifest.cem.kmeans_iters == 25
    assert manifest.cem.lambda_units is None and manifest.cem.units == "raw-eq7-nats"
    assert manifest.metrics.xi_relative == 0.0042 and manifest.metrics.xi_estimate is None
    assert manifest.metrics.to_dict()["mse_bound_xi"] == 0.0042


def test_unknown_keys_in_the_manifest_records_are_ignored(bundle: tuple[Path, SplitModel]) -> None:
    path, model = bundle
    raw = json.loads((path / "manifest.json").read_text())
    _rewrite_manifest(path, model={**raw["model"], "extra": {"note": "x"}, "future_field": 1},
                      cem={**raw["cem"], "future_field": "x"}, metrics={**raw["metrics"], "future_metric": 1.0},
                      dataset={**raw["dataset"], "future_field": True})
    manifest = load_manifest(path)
    assert manifest.model == model.config and manifest.cem == CEMRecord(lam=1.0, k=3)
    assert manifest.metrics.to_dict() == {"accuracy": 0.5, "entropy_bound": -10.0}


@pytest.mark.parametrize(
    ("record", "value", "message"),
    [
        ("metrics", {"mse_bound_xi": "0.1"}, "expected metrics.mse_bound_xi to be float, got '0.1'"),
        ("metrics", {"accuracy": True}, "expected metrics.accuracy to be float, got True"),
        ("metrics", [0.5], "expected metrics to be a JSON object, got list"),
        ("cem", {"k": 3}, "expected cem.lam, got none"),
        ("cem", {"lam": 1.0, "k": 3.0}, "expected cem.k to be int, got 3.0"),
        ("dataset", {"name": "digits"}, "expected a complete dataset record"),
    ],
)
def test_a_mistyped_manifest_record_is_a_format_error_naming_the_field(
    bundle: tuple[Path, SplitModel], record: str, value: object, message: str
) -> None:
    path, _ = bundle
    _rewrite_manifest(path, **{record: value})
    with pytest.raises(BundleFormatError, match=re.escape(message)):
        load_manifest(path)


def test_records_round_trip_through_their_json_keys() -> None:
    metrics = MetricsRecord(accuracy=0.9, xi_relative=0.04, xi_estimate=1e-4, native_dim=64.0)
    assert metrics.to_dict() == {"accuracy": 0.9, "mse_bound_xi": 0.04, "mse_bound_xi_estimate": 1e-4,
                                 "native_dim": 64.0}
    assert MetricsRecord.from_dict(metrics.to_dict()) == metrics
    assert MetricsRecord.from_dict({"accuracy": 1}).accuracy == 1.0  # a JSON integer is a number too
    with pytest.raises(ConfigError, match="expected metrics.mse_bound_xi to be float, got '0.1'"):
        MetricsRecord(xi_relative="0.1")  # type: ignore[arg-type]  # checked however a record is built
    cem = CEMRecord(lam=16.0, k=3, lambda_units="paper", persist_updates=True)
    assert CEMRecord.from_dict(cem.to_dict()) == cem and cem.units == "paper"
