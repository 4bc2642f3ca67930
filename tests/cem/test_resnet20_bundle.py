"""A ResNet-20 bundle round-trips: the edge's encoder and the cloud's decoder, rebuilt from the manifest alone,
give the logits of the model that was written."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from bundle_fixtures import build_resnet20_model

from cem.bundle import load_bundle, load_decoder, load_encoder, load_manifest, save_bundle
from cem.data import DatasetInfo
from cem.data.vision import TINYIMAGENET_STATS


def test_resnet20_bundle_round_trips_through_the_edge_and_the_cloud(tmp_path: Path) -> None:
    mean, std, side = TINYIMAGENET_STATS
    info = DatasetInfo(name="tinyimagenet", num_classes=4, in_channels=3, image_size=side, mean=mean, std=std)
    model = build_resnet20_model(info, seed=3)
    manifest = save_bundle(tmp_path / "b", model, noise_std=0.025, dataset=info)
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert raw["model"]["arch"] == "resnet20" and raw["model"]["cut_layer"] == 5 and raw["feature_shape"] == [8, 16, 16]
    assert load_manifest(tmp_path / "b").model == manifest.model == model.config
    (tmp_path / "edge").mkdir()
    (tmp_path / "cloud").mkdir()
    for name, side_dir in (("encoder.safetensors", "edge"), ("decoder.safetensors", "cloud")):
        (tmp_path / side_dir / name).write_bytes((tmp_path / "b" / name).read_bytes())
        (tmp_path / side_dir / "manifest.json").write_bytes((tmp_path / "b" / "manifest.json").read_bytes())
    _, encoder = load_encoder(tmp_path / "edge")  # each party holds only its half
    _, decoder = load_decoder(tmp_path / "cloud")
    x = torch.rand(3, 3, side, side)
    with torch.no_grad():
        z = encoder(x)
        assert tuple(z.shape) == (3, 8, 16, 16)
        assert torch.equal(decoder(z), model(x))
        assert torch.equal(load_bundle(tmp_path / "b")[1](x), model(x))
