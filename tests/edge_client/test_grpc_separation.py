"""The edge never loads the decoder and the cloud never loads the encoder; tampered bundles are refused."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

from cem.errors import BundleIntegrityError
from cloud_server import ServerSettings, create_server
from edge_client import ClientSettings, EdgeClient

REPO = Path(__file__).resolve().parents[2]
# What each side may never reach: the other app, and the loaders of the other half.
FORBIDDEN = {
    "edge_client": {"modules": ("cloud_server",),
                    "names": {"load_decoder", "load_bundle", "SplitDecoder", "SplitModel"}},
    "cloud_server": {"modules": ("edge_client",),
                     "names": {"load_encoder", "load_bundle", "SplitEncoder", "SplitModel"}},
}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_source_never_names_the_other_half(package: str) -> None:
    rules = FORBIDDEN[package]
    for path in sorted((REPO / package).glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(rules["modules"]), f"{path.name} imports {node.module}"
                assert not {a.name for a in node.names} & rules["names"], f"{path.name} imports {node.names}"
            elif isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
                assert not any(n.startswith(rules["modules"]) for n in imported), f"{path.name} imports another app"
            elif isinstance(node, (ast.Name, ast.Attribute)):
                name = node.id if isinstance(node, ast.Name) else node.attr
                assert name not in rules["names"], f"{path.name} uses {name}"


def test_edge_runs_without_the_decoder_and_cloud_without_the_encoder(bundle_copy: Path, tmp_path: Path) -> None:
    edge_bundle = Path(shutil.copytree(bundle_copy, tmp_path / "edge"))
    (edge_bundle / "decoder.safetensors").unlink()
    (bundle_copy / "encoder.safetensors").unlink()
    server, port = create_server(ServerSettings(bundle_dir=bundle_copy, port=0, device="cpu"))
    server.start()
    try:
        assert server.wait_until_serving(30)
        with EdgeClient(edge_bundle, f"127.0.0.1:{port}") as client:
            assert client.check_server().model_id == client.manifest.model_id
            assert len(client.classify(torch.zeros(3, 1, 32, 32)).predictions) == 3
    finally:
        server.stop(0).wait(10)


def test_tampered_decoder_is_refused_by_the_cloud_with_the_reason(bundle_copy: Path) -> None:
    _flip_a_byte(bundle_copy / "decoder.safetensors")
    with pytest.raises(BundleIntegrityError, match="decoder.safetensors failed verification"):
        create_server(ServerSettings(bundle_dir=bundle_copy, port=0, device="cpu"))


def test_tampered_encoder_is_refused_by_the_edge_with_the_reason(bundle_copy: Path) -> None:
    _flip_a_byte(bundle_copy / "encoder.safetensors")
    with pytest.raises(BundleIntegrityError, match="encoder.safetensors failed verification"):
        EdgeClient(bundle_copy, "127.0.0.1:1", ClientSettings())


def test_public_surfaces_are_pinned() -> None:
    import cloud_server
    import edge_client

    assert sorted(cloud_server.__all__) == ["CloudServer", "ServerSettings", "create_server"]
    assert sorted(edge_client.__all__) == [
        "ClientSettings", "EdgeClient", "ImageInputError", "ModelMismatchError", "Prediction",
        "RemoteCallError", "RetryPolicy", "TlsOptions", "prepare_images",
    ]
