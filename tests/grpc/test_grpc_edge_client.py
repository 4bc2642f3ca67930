"""EdgeClient against a real server: accuracy parity with in-process inference, streams, inputs, retries."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cem.bundle import load_bundle
from cem.data import load_dataset
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig, obfuscate
from cloud_server import CloudServer, ServerSettings, create_server
from edge_client import ClientSettings, EdgeClient, ImageInputError, RemoteCallError, RetryPolicy
from edge_client.cli import build_settings, get_args_parser
from edge_client.evaluate import evaluate_over_wire
from edge_client.transport import call_with_retry, reconnect_options
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


def test_no_server_is_unavailable_once_the_budget_is_spent(digits_bundle: Path) -> None:
    """The default policy but a 1 s budget: waits of 0.05, 0.1, 0.2 and 0.4 s fit, the next 0.8 s does not."""
    policy = RetryPolicy(budget_s=1.0, jitter=0.0)
    started = time.monotonic()
    with EdgeClient(digits_bundle, "127.0.0.1:1", ClientSettings(retry=policy, timeout_s=1.0)) as client:
        with pytest.raises(RemoteCallError) as info:
            client.classify(torch.zeros(1, 1, 32, 32))
    assert time.monotonic() - started < policy.budget_s
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 5 < policy.max_attempts
    assert "Connection refused" in info.value.details  # gRPC's own reason, not a made-up one


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.03, multiplier=2.0, jitter=0.0)
    channel, stub = open_stub(1)
    with channel, pytest.raises(RemoteCallError) as info:
        call_with_retry("GetModelInfo", lambda deadline_s: stub.GetModelInfo(pb.ModelInfoRequest(), timeout=deadline_s),
                        policy, timeout_s=2.0, sleep=waits.append)
    assert info.value.attempts == 5 and waits == [0.01, 0.02, 0.03, 0.03]


class _Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"fake {self._code.name}"


@pytest.mark.parametrize("cloud", ["down", "slow"])
@pytest.mark.parametrize("timeout_s, budget_s", [(10.0, 10.0), (3.0, 7.5), (0.5, 4.0), (0.01, 0.3)])
def test_a_call_and_its_attempts_never_outlive_the_budget(cloud: str, timeout_s: float, budget_s: float) -> None:
    """On a fake clock, against a cloud that is down (attempts fail at once) or too slow (attempts use their
    whole deadline): every attempt's deadline ends inside the budget and so does the call."""
    now = [100.0]
    calls: list[tuple[float, float]] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def call(deadline_s: float) -> None:
        calls.append((now[0], deadline_s))
        if cloud == "down":
            raise _Status(grpc.StatusCode.UNAVAILABLE)
        now[0] += deadline_s
        raise _Status(grpc.StatusCode.DEADLINE_EXCEEDED)

    policy = RetryPolicy(max_attempts=1000, budget_s=budget_s)
    with pytest.raises(RemoteCallError) as info:
        call_with_retry("Infer", call, policy, timeout_s=timeout_s, sleep=sleep, rng=random.Random(0),
                        clock=lambda: now[0])
    end = 100.0 + budget_s
    assert now[0] <= end
    for started, deadline_s in calls:
        assert 0 < deadline_s <= timeout_s and started + deadline_s <= end + 1e-9
    assert info.value.attempts == len(calls) < policy.max_attempts  # the budget ended the call, not the count
    expected = grpc.StatusCode.UNAVAILABLE if cloud == "down" else grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.code == expected


def test_the_channel_re_dials_about_as_often_as_the_policy_retries() -> None:
    """gRPC's own reconnect backoff (1 s, x1.6, up to 120 s) would keep a channel from dialling a restarted cloud."""
    assert dict(reconnect_options(RetryPolicy())) == {
        "grpc.initial_reconnect_backoff_ms": 100,  # 50 ms, raised to gRPC's floor
        "grpc.max_reconnect_backoff_ms": 2000,
    }
    assert dict(reconnect_options(RetryPolicy(initial_backoff_s=0.25, max_backoff_s=1.0))) == {
        "grpc.initial_reconnect_backoff_ms": 250,
        "grpc.max_reconnect_backoff_ms": 1000,
    }


def test_the_budget_is_validated_and_reaches_the_cli() -> None:
    with pytest.raises(ConfigError, match="retry budget > 0"):
        RetryPolicy(budget_s=0)
    with pytest.raises(ConfigError, match="expected timeout_s <= retry.budget_s"):
        ClientSettings(timeout_s=12.0, retry=RetryPolicy(budget_s=10.0))
    common = ["classify", "--server", "127.0.0.1:1", "--bundle", "b", "x.png"]
    assert build_settings(get_args_parser().parse_args(common)) == ClientSettings(seed=0)  # one source of defaults
    custom = build_settings(get_args_parser().parse_args([*common, "--retry-budget", "30", "--timeout-s", "20"]))
    assert custom.retry.budget_s == 30.0 and custom.timeout_s == 20.0


def test_the_default_budget_rides_out_a_cloud_restart_and_the_old_one_does_not(digits_bundle: Path) -> None:
    """Issue 10 item 8: 4 attempts with 0.35 s of waits failed 58 of 8,000 requests across a 2.7 s restart.

    The cloud stops, and restarts on the same port 2.7 s later; 11 requests per client are issued while it is
    down (0.1-2.1 s). With the default policy all are answered once the channel re-dials; within a 0.35 s
    budget all fail, and with UNAVAILABLE.
    """
    settings = ServerSettings(bundle_dir=digits_bundle, host="127.0.0.1", port=0, device="cpu")
    first, port = create_server(settings)
    first.start()
    assert first.wait_until_serving(30)
    policies = {"default": RetryPolicy(), "0.35 s": RetryPolicy(max_attempts=4, budget_s=0.35)}
    clients = {
        name: EdgeClient(digits_bundle, f"127.0.0.1:{port}", ClientSettings(retry=p, timeout_s=min(p.budget_s, 10.0)))
        for name, p in policies.items()
    }
    features = clients["default"].encode(torch.zeros(2, 1, 32, 32))  # (2, 8, 8, 8)
    for client in clients.values():
        client.infer_features(features)  # both channels READY before the cloud goes away
    outcomes: dict[str, list[tuple[str, float]]] = {name: [] for name in clients}
    second: list[CloudServer] = []

    def restart() -> None:
        time.sleep(2.7)
        server, _ = create_server(dataclasses.replace(settings, port=port))
        server.start()
        second.append(server)

    def send(name: str) -> None:
        started = time.monotonic()
        try:
            clients[name].infer_features(features)
            code = "OK"
        except RemoteCallError as exc:
            code = exc.code.name
        outcomes[name].append((code, time.monotonic() - started))

    first.stop(0).wait(10)
    down_at = time.monotonic()
    threads = [threading.Thread(target=restart)]
    threads[0].start()
    try:
        for i in range(11):
            time.sleep(max(0.0, down_at + 0.1 + 0.2 * i - time.monotonic()))
            for name in clients:
                threads.append(threading.Thread(target=send, args=(name,)))
                threads[-1].start()
        for thread in threads:
            thread.join(30)
    finally:
        for client in clients.values():
            client.close()
        for server in second:
            server.stop(0).wait(10)
    answered = outcomes["default"]
    assert [code for code, _ in answered] == ["OK"] * 11
    assert max(latency for _, latency in answered) < RetryPolicy.budget_s
    assert max(latency for _, latency in answered) > 2.0  # the first ones did wait for the restart
    assert [code for code, _ in outcomes["0.35 s"]] == ["UNAVAILABLE"] * 11


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
