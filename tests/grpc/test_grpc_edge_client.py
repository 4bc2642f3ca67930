"""EdgeClient against a real server: accuracy parity with in-process inference, streams, inputs, retries."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cem.bundle import load_bundle
from cem.data import load_dataset
from cem.obfuscation import ObfuscationConfig, obfuscate
from edge_client import ClientSettings, EdgeClient, ImageInputError, RemoteCallError, RetryPolicy
from edge_client.evaluate import evaluate_over_wire
from edge_client.transport import call_with_retry
from grpc_helpers import open_stub
from protos import cem_split_pb2 as pb

SEED = 1234
BATCH = 64


def _in_process_predictions(bundle: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder, the bundle's noise from a generator seeded like the edge's, decoder: all in one process."""
    manifest, model = load_bundle(bundle)
    config = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    generator = torch.Generator().manual_seed(seed)
    test, _ = load_dataset("digits", split="test")
    predictions, labels = [], []
    with torch.inference_mode():
        for x, y in DataLoader(test, batch_size=BATCH):
            predictions.append(model.decoder(obfuscate(model.encoder(x), config, generator)).argmax(1))
            labels.append(y)
    return torch.cat(predictions), torch.cat(labels)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_accuracy_over_the_wire_equals_in_process_accuracy(digits_bundle: Path, start_server, stream: bool) -> None:
    server = start_server()
    expected, labels = _in_process_predictions(digits_bundle, SEED)
    test, _ = load_dataset("digits", split="test")
    with EdgeClient(digits_bundle, f"127.0.0.1:{server.port}", ClientSettings(seed=SEED)) as client:
        report = evaluate_over_wire(client, test, dataset_name="digits", split="test", batch_size=BATCH,
                                    stream=stream, show_progress=False)
    in_process_correct = int((expected == labels).sum())
    assert report.images == len(test) == 539
    assert report.correct == in_process_correct and report.accuracy == in_process_correct / 539
    assert report.accuracy > 0.5  # the fixture model learned something, so parity is not trivial
    assert report.bytes_per_image > 8 * 8 * 8 * 4  # float32 features plus the message framing


def test_same_seed_same_predictions_per_sample(digits_bundle: Path, start_server) -> None:
    server = start_server()
    expected, _ = _in_process_predictions(digits_bundle, SEED)
    test, _ = load_dataset("digits", split="test")
    x = torch.stack([test[i][0] for i in range(BATCH)])
    with EdgeClient(digits_bundle, f"127.0.0.1:{server.port}", ClientSettings(seed=SEED)) as client:
        prediction = client.classify(x)
    assert prediction.predictions == expected[:BATCH].tolist()
    assert prediction.served_batch_size == BATCH and prediction.logits.shape == (BATCH, 10)


def test_images_from_paths_pil_arrays_and_tensors_give_the_same_features(digits_bundle: Path, tmp_path: Path) -> None:
    test, _ = load_dataset("digits", split="test")
    image = test[0][0]  # (1, 32, 32) in [0, 1]
    array = (image[0].numpy() * 255).round().astype(np.uint8)  # (32, 32)
    path = tmp_path / "digit.png"
    Image.fromarray(array).save(path)
    with EdgeClient(digits_bundle, "127.0.0.1:1", ClientSettings(seed=0)) as client:
        batch = client.prepare([path, Image.open(path), array, torch.from_numpy(array), torch.from_numpy(array).float() / 255])
    assert batch.shape == (5, 1, 32, 32)
    for row in batch[1:]:
        assert torch.equal(row, batch[0])
    assert torch.allclose(batch[0], image, atol=1 / 255)


def test_other_sizes_and_colour_are_converted_to_the_bundle_format(digits_bundle: Path) -> None:
    rgb = Image.new("RGB", (64, 48), color=(255, 255, 255))
    with EdgeClient(digits_bundle, "127.0.0.1:1") as client:
        batch = client.prepare([rgb, np.full((10, 12, 3), 0.5, dtype=np.float32)])
    assert batch.shape == (2, 1, 32, 32)
    assert torch.allclose(batch[0], torch.ones(1, 32, 32)) and torch.allclose(batch[1], torch.full((1, 32, 32), 0.5))


@pytest.mark.parametrize(
    "bad, text",
    [
        (torch.full((1, 32, 32), 2.0), "values in [0, 1]"),
        (np.zeros((2, 3, 4, 5)), "expected an array of shape"),
        (torch.zeros((5, 32, 32)), "channels"),
        ("/nonexistent/image.png", "does not exist"),
    ],
    ids=["out of range", "4-d array", "5 channels", "missing file"],
)
def test_bad_images_are_refused_before_anything_is_sent(digits_bundle: Path, bad: object, text: str) -> None:
    with EdgeClient(digits_bundle, "127.0.0.1:1") as client, pytest.raises(ImageInputError) as info:
        client.prepare(bad)  # type: ignore[arg-type]
    assert text in str(info.value)


def test_no_server_is_unavailable_after_the_configured_retries(digits_bundle: Path) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, jitter=0.0)
    with EdgeClient(digits_bundle, "127.0.0.1:1", ClientSettings(retry=policy, timeout_s=2.0)) as client:
        with pytest.raises(RemoteCallError) as info:
            client.classify(torch.zeros(1, 1, 32, 32))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 3


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.03, multiplier=2.0, jitter=0.0)
    channel, stub = open_stub(1)
    with channel, pytest.raises(RemoteCallError) as info:
        call_with_retry("GetModelInfo", lambda: stub.GetModelInfo(pb.ModelInfoRequest(), timeout=2), policy, sleep=waits.append)
    assert info.value.attempts == 5 and waits == [0.01, 0.02, 0.03, 0.03]


def test_invalid_argument_is_not_retried(digits_bundle: Path, start_server) -> None:
    server = start_server()
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.01)
    with EdgeClient(digits_bundle, f"127.0.0.1:{server.port}", ClientSettings(retry=policy)) as client:
        with pytest.raises(RemoteCallError) as info:
            client.infer_features(torch.rand(1, 8, 8, 4))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.attempts == 1
    assert "expected shape (B, 8, 8, 8), got [1, 8, 8, 4]" in str(info.value)


def test_deadline_exceeded_is_reported_after_retries(digits_bundle: Path, start_server) -> None:
    server = start_server(max_delay_ms=200)
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.0, max_backoff_s=0.0, jitter=0.0)
    settings = ClientSettings(timeout_s=0.001, retry=policy)
    with EdgeClient(digits_bundle, f"127.0.0.1:{server.port}", settings) as client, pytest.raises(RemoteCallError) as info:
        client.classify(torch.zeros(256, 1, 32, 32))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.attempts == 2


def test_sample_ids_travel_only_when_given(digits_bundle: Path) -> None:
    with EdgeClient(digits_bundle, "127.0.0.1:1") as client:
        features = torch.rand(2, 8, 8, 8)
        assert list(client.build_request(features).sample_ids) == []
        with_ids = client.build_request(features, sample_ids=["digits/test/0", "digits/test/1"])
    assert list(with_ids.sample_ids) == ["digits/test/0", "digits/test/1"]
    assert with_ids.model_id == client.manifest.model_id and with_ids.request_id
