"""EdgeClient against a real server: accuracy parity with in-process inference, streams, inputs, retries."""

from __future__ import annotations

import dataclasses
import functools
import random
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_helpers import open_stub
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
        as_tensor = torch.from_numpy(array)
        batch = client.prepare([path, Image.open(path), array, as_tensor, as_tensor.float() / 255])
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
        (torch.full((2, 1, 32, 32), float("nan")), "values in [0, 1], got range [nan, nan]"),
        (torch.full((2, 1, 32, 32), -float("inf")), "values in [0, 1], got range [-inf, -inf]"),
        (np.zeros((2, 3, 4, 5)), "expected an array of shape"),
        (torch.zeros((5, 32, 32)), "channels"),
        ("/nonexistent/image.png", "does not exist"),
    ],
    ids=["out of range", "NaN batch", "-Inf batch", "4-d array", "5 channels", "missing file"],
)
def test_bad_images_are_refused_before_anything_is_sent(digits_bundle: Path, bad: object, text: str) -> None:
    with EdgeClient(digits_bundle, "127.0.0.1:1") as client, pytest.raises(ImageInputError) as info:
        client.prepare(bad)  # type: ignore[arg-type]
    assert text in str(info.value)


def test_no_server_is_unavailable_after_the_configured_retries(digits_bundle: Path) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, jitter=0.0)
    with EdgeClient(digits_bundle, "127.0.0.1:1", ClientSettings(retry=policy, timeout_s=2.0)) as client, \
            pytest.raises(RemoteCallError) as info:
        client.classify(torch.zeros(1, 1, 32, 32))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 3


def test_no_server_is_unavailable_once_the_budget_is_spent(digits_bundle: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The default policy but a 1 s budget: waits of 0.05, 0.1, 0.2 and 0.4 s fit, the next 0.8 s does not.

    Real refused connections, but the client's retry loop runs on a fake clock that only its waits advance,
    so the count of attempts does not depend on how busy the machine is."""
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr("edge_client.client.call_with_retry",
                        functools.partial(call_with_retry, sleep=sleep, clock=lambda: now[0]))
    policy = RetryPolicy(budget_s=1.0, jitter=0.0)
    with EdgeClient(digits_bundle, "127.0.0.1:1", ClientSettings(retry=policy, timeout_s=1.0)) as client, \
            pytest.raises(RemoteCallError) as info:
        client.classify(torch.zeros(1, 1, 32, 32))
    assert waits == [0.05, 0.1, 0.2, 0.4] and now[0] < policy.budget_s
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
    assert reconnect_options(RetryPolicy(align_reconnect=False)) == []  # gRPC's own backoff, as before the budget


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

    The cloud stops; 11 requests per client are issued while it is down (one every 0.2 s), and it restarts on
    the same port once every request under the 0.35 s budget has ended, and no sooner than 2.7 s after the
    stop. Those all fail with UNAVAILABLE (the cloud was down for their whole budget); every request under the
    default policy was issued before the restart, waited for it and is answered. Events, not the clock,
    order the restart after the requests, so the outcome does not depend on how busy the machine is.
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
    requests = 11
    outcomes: dict[str, list[tuple[str, bool]]] = {name: [] for name in clients}  # (code, sent before the restart)
    lock = threading.Lock()
    short_budget_done = threading.Semaphore(0)
    restarted = threading.Event()
    second: list[CloudServer] = []

    def restart() -> None:
        for _ in range(requests):
            assert short_budget_done.acquire(timeout=60)
        time.sleep(max(0.0, down_at + 2.7 - time.monotonic()))  # the benchmark's restart length, at least
        server, _ = create_server(dataclasses.replace(settings, port=port))
        restarted.set()
        server.start()
        second.append(server)

    def send(name: str, before_restart: bool) -> None:
        try:
            clients[name].infer_features(features)
            code = "OK"
        except RemoteCallError as exc:
            code = exc.code.name
        with lock:
            outcomes[name].append((code, before_restart))
        if name == "0.35 s":
            short_budget_done.release()

    first.stop(0).wait(10)
    down_at = time.monotonic()
    threads = [threading.Thread(target=restart)]
    threads[0].start()
    try:
        for i in range(requests):
            time.sleep(max(0.0, down_at + 0.1 + 0.2 * i - time.monotonic()))  # pacing only; nothing is timed
            for name in clients:
                threads.append(threading.Thread(target=send, args=(name, not restarted.is_set())))
                threads[-1].start()
        for thread in threads:
            thread.join(60)
    finally:
        for client in clients.values():
            client.close()
        for server in second:
            server.stop(0).wait(10)
    assert restarted.is_set() and not any(thread.is_alive() for thread in threads)
    # The short budget ends in UNAVAILABLE, or DEADLINE_EXCEEDED when a starved machine runs past 0.35 s: failed.
    assert all(code in {"UNAVAILABLE", "DEADLINE_EXCEEDED"} and before for code, before in outcomes["0.35 s"]), outcomes
    assert len(outcomes["0.35 s"]) == requests
    assert outcomes["default"] == [("OK", True)] * requests, outcomes  # sent while the cloud was down, answered after


def test_invalid_argument_is_not_retried(digits_bundle: Path, start_server) -> None:
    server = start_server()
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.01)
    with EdgeClient(digits_bundle, f"127.0.0.1:{server.port}", ClientSettings(retry=policy)) as client, \
            pytest.raises(RemoteCallError) as info:
        client.infer_features(torch.rand(1, 8, 8, 4))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.attempts == 1
    assert "expected shape (B, 8, 8, 8), got [1, 8, 8, 4]" in str(info.value)


def test_deadline_exceeded_is_reported_after_retries(digits_bundle: Path, start_server) -> None:
    server = start_server(max_delay_ms=200)
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.0, max_backoff_s=0.0, jitter=0.0)
    settings = ClientSettings(timeout_s=0.001, retry=policy)
    with EdgeClient(digits_bundle, f"127.0.0.1:{server.port}", settings) as client, \
            pytest.raises(RemoteCallError) as info:
        client.classify(torch.zeros(256, 1, 32, 32))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.attempts == 2


def test_sample_ids_travel_only_when_given(digits_bundle: Path) -> None:
    with EdgeClient(digits_bundle, "127.0.0.1:1") as client:
        features = torch.rand(2, 8, 8, 8)
        assert list(client.build_request(features).sample_ids) == []
        with_ids = client.build_request(features, sample_ids=["digits/test/0", "digits/test/1"])
    assert list(with_ids.sample_ids) == ["digits/test/0", "digits/test/1"]
    assert with_ids.model_id == client.manifest.model_id and with_ids.request_id
