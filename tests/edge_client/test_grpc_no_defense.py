"""The No_defense bundle (no bottleneck: unbounded ReLU features, no noise) on the edge and the cloud over gRPC.

Shapes come from the manifest only, so nothing may assume 8 channels or values in (0, 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cem.bundle import load_bundle
from cem.codec import decode_tensor, encode_tensor
from cem.data import load_dataset
from edge_client import ClientSettings, EdgeClient

BATCH = 64


def _images_and_logits(bundle: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """BATCH digits test images and the whole model's logits for them, in one process."""
    _, model = load_bundle(bundle)
    test, _ = load_dataset("digits", split="test")
    x = torch.stack([test[i][0] for i in range(BATCH)])
    with torch.inference_mode():
        return x, model.decoder(model.encoder(x))


def test_edge_and_cloud_serve_the_unbounded_features(no_defense_bundle: Path, start_server) -> None:
    server = start_server(no_defense_bundle)
    x, expected = _images_and_logits(no_defense_bundle)
    with EdgeClient(no_defense_bundle, f"127.0.0.1:{server.port}", ClientSettings(seed=0)) as client:
        info = client.check_server()
        z = client.encode(x)
        prediction = client.classify(x)
    assert list(info.feature_shape) == [16, 8, 8] and info.noise_std == 0.0  # 128 · 0.125 channels at cut 4
    assert tuple(z.shape) == (BATCH, 16, 8, 8)
    assert float(z.min()) >= 0.0 and float(z.max()) > 1.0  # ReLU output: no Sigmoid squashed it
    torch.testing.assert_close(prediction.logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wire_dtype", ["float16", "int8"])
def test_compact_wire_dtypes_carry_unbounded_features(no_defense_bundle: Path, start_server, wire_dtype: str) -> None:
    server = start_server(no_defense_bundle)
    x, expected = _images_and_logits(no_defense_bundle)
    settings = ClientSettings(seed=0, wire_dtype=wire_dtype)
    with EdgeClient(no_defense_bundle, f"127.0.0.1:{server.port}", settings) as client:
        z = client.encode(x)
        prediction = client.classify(x)
    message = encode_tensor(z, wire_dtype)
    error = (decode_tensor(message) - z).abs().max().item()
    # int8 spreads [min, max] over 256 levels (error <= scale/2); float16 keeps ~2^-11 relative precision.
    bound = message.scale / 2 + 1e-6 if wire_dtype == "int8" else float(z.abs().max()) * 2.0**-11
    assert error <= bound, (error, bound)
    agree = (prediction.logits.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agree >= 0.9, agree
