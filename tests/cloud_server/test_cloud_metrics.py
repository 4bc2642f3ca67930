"""``cem-cloud``'s Prometheus endpoint over real HTTP: traffic counters, batching, error codes, privacy gauges."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import torch
from bundle_fixtures import build_digits_model, write_digits_bundle
from grpc_helpers import open_stub
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import serving_clouds

from cem.bounds import privacy_bound
from cem.bundle import load_manifest
from cem.codec import encode_tensor
from cem.errors import ConfigError
from cem.processes import ServiceProcess
from cloud_server import CloudServer, ServerSettings, create_server
from cloud_server.cli import build_settings, get_args_parser
from protos import cem_split_pb2 as pb

FEATURES = (8, 8, 8)
INFER = "/cem.split.v1.SplitInference/Infer"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# A bundle as CEM training writes it: λ in the paper's units, and both kinds of ξ (cem.bounds).
PAPER_CEM = {"lam": 0.0075, "lambda_units": "paper", "k": 4}
BOTH_BOUNDS = {"entropy_bound": -1.25, "mse_bound_xi": 0.0042, "entropy_bound_estimate": 3.5,
               "mse_bound_xi_estimate": 0.011, "entropy_x_estimate": 80.0, "native_dim": 64.0,
               "mean_image_mse": 0.09, "mean_image_mse_native": 0.08}


@pytest.fixture(scope="module")
def cem_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("metrics-bundles") / "cem"
    return write_digits_bundle(out, 0.2, model=build_digits_model(seed=1), metrics=BOTH_BOUNDS, cem=PAPER_CEM)


@pytest.fixture(scope="module")
def legacy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """λ without ``lambda_units`` (the legacy raw-Eq.-7 unit) and only the relative ξ."""
    out = tmp_path_factory.mktemp("metrics-bundles") / "legacy"
    return write_digits_bundle(out, 0.05, model=build_digits_model(seed=2), cem={"lam": 2.0},
                               metrics={"entropy_bound": -3.0, "mse_bound_xi": 0.0007})


@pytest.fixture(scope="module")
def plain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No CEM record (training writes none when λ = 0) and no bound."""
    return write_digits_bundle(tmp_path_factory.mktemp("metrics-bundles") / "plain", 0.1,
                               model=build_digits_model(seed=3))


@pytest.fixture
def start_server(cem_bundle: Path) -> Iterator[Callable[..., CloudServer]]:
    """``server_fixtures.start_server`` with this module's bundle as the default, so no test here waits for the
    session's trained digits bundle."""
    yield from serving_clouds(cem_bundle)


def scrape(server: CloudServer) -> Samples:
    """Every sample on /metrics, keyed by (name, sorted labels); the text must parse as Prometheus exposition."""
    response = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when absent (counters with that label set have not moved yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


def infer_request(batch: int = 2, dtype: str = "float32", **fields: object) -> pb.InferRequest:
    return pb.InferRequest(request_id="m", features=encode_tensor(torch.rand(batch, *FEATURES), dtype), **fields)


def test_metrics_are_off_by_default(start_server) -> None:
    assert start_server().metrics_port is None


def test_the_served_bundles_privacy_settings_are_gauges_with_their_kind(start_server, cem_bundle: Path) -> None:
    server = start_server(cem_bundle, metrics_listen="127.0.0.1:0")
    samples = scrape(server)
    manifest = load_manifest(cem_bundle)
    model_id = manifest.model_id
    assert series(samples, "cem_cloud_noise_std") == {(("model_id", model_id),): pytest.approx(0.2)}
    assert series(samples, "cem_cloud_cem_lambda") == {
        (("model_id", model_id), ("units", "paper")): pytest.approx(0.0075)}
    bound = privacy_bound(manifest.metrics)
    assert bound is not None and bound["kind"] == "estimate"
    assert series(samples, "cem_cloud_privacy_bound_xi") == {
        (("kind", "estimate"), ("model_id", model_id)): pytest.approx(0.011),  # an estimate, labelled as one
        (("kind", "relative"), ("model_id", model_id)): pytest.approx(0.0042),
    }
    # the warm-up inference ran through the batcher, but it is not a served batch
    assert value(samples, "cem_cloud_served_batch_size_count") == 0
    assert value(samples, "cem_cloud_requests_total", method="Infer", code="OK") == 0


@pytest.mark.parametrize("bundle, units, lam, kinds", [
    ("legacy_bundle", "raw-eq7-nats", 2.0, {"relative": 0.0007}),
    ("plain_bundle", "paper", 0.0, {}),
])
def test_a_legacy_lambda_keeps_its_unit_and_a_missing_bound_is_no_series(
    start_server, request: pytest.FixtureRequest, bundle: str, units: str, lam: float, kinds: dict[str, float]
) -> None:
    bundle_dir = request.getfixturevalue(bundle)
    model_id = load_manifest(bundle_dir).model_id
    samples = scrape(start_server(bundle_dir, metrics_listen="127.0.0.1:0"))
    assert series(samples, "cem_cloud_cem_lambda") == {(("model_id", model_id), ("units", units)): lam}
    assert series(samples, "cem_cloud_privacy_bound_xi") == {
        (("kind", kind), ("model_id", model_id)): pytest.approx(xi) for kind, xi in kinds.items()}


def test_counters_move_with_traffic(start_server, cem_bundle: Path) -> None:
    server = start_server(cem_bundle, metrics_listen="127.0.0.1:0")
    before = scrape(server)
    sent = {"float32": 0, "float16": 0, "int8": 0}
    answered = 0
    channel, stub = open_stub(server.port)
    with channel:
        for dtype in ("float32", "float32", "float32", "float16", "int8"):  # 5 unary requests of 2 samples
            message = infer_request(2, dtype)
            sent[dtype] += message.ByteSize()
            answered += stub.Infer(message, timeout=10).ByteSize()
        stream = [infer_request(3) for _ in range(3)]
        sent["float32"] += sum(m.ByteSize() for m in stream)
        answered += sum(r.ByteSize() for r in stub.InferStream(iter(stream), timeout=10))
        stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("cem_cloud_requests_total", method="Infer", code="OK") == 5
    assert delta("cem_cloud_requests_total", method="InferStream", code="OK") == 3
    assert delta("cem_cloud_requests_total", method="GetModelInfo", code="OK") == 1
    assert delta("cem_cloud_request_duration_seconds_count", method="Infer") == 5
    assert delta("cem_cloud_request_duration_seconds_count", method="InferStream") == 3
    for dtype, size in sent.items():
        assert delta("cem_cloud_received_bytes_total", dtype=dtype) == size
    assert delta("cem_cloud_sent_bytes_total", dtype="float32") == answered
    batches = delta("cem_cloud_served_batch_size_count")
    assert 1 <= batches <= 8 and delta("cem_cloud_served_batch_size_sum") == 5 * 2 + 3 * 3  # every sample once
    assert delta("cem_cloud_decoder_seconds_count") == batches
    assert delta("cem_cloud_decoder_seconds_sum") > 0
    assert delta("cem_cloud_queue_wait_seconds_count") == 8  # one per served request
    assert value(after, "cem_cloud_requests_in_flight") == 0


def test_a_refused_request_is_counted_with_its_status_code(start_server, cem_bundle: Path) -> None:
    server = start_server(cem_bundle, metrics_listen="127.0.0.1:0", max_batch=4)
    refused = [
        (infer_request(model_id="not-this-model"), grpc.StatusCode.NOT_FOUND),
        (infer_request(2, sample_ids=["digits/test/1"]), grpc.StatusCode.INVALID_ARGUMENT),
        (infer_request(5), grpc.StatusCode.RESOURCE_EXHAUSTED),  # above max_batch
    ]
    before = scrape(server)
    channel, stub = open_stub(server.port)
    with channel:
        for message, code in refused:
            with pytest.raises(grpc.RpcError) as error:
                stub.Infer(message, timeout=10)
            assert error.value.code() == code
        with pytest.raises(grpc.RpcError) as error:
            channel.unary_unary(INFER)(b"\xff" * 64, timeout=10)  # not a protobuf message at all
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as error:  # a stream: two answered, the third ends it with its code
            stream = [infer_request(1), infer_request(1), infer_request(1, model_id="nope")]
            list(stub.InferStream(iter(stream), timeout=10))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("cem_cloud_requests_total", method="Infer", code="NOT_FOUND") == 1
    assert delta("cem_cloud_requests_total", method="Infer", code="INVALID_ARGUMENT") == 2
    assert delta("cem_cloud_requests_total", method="Infer", code="RESOURCE_EXHAUSTED") == 1
    assert delta("cem_cloud_requests_total", method="Infer", code="OK") == 0
    assert delta("cem_cloud_requests_total", method="InferStream", code="OK") == 2
    assert delta("cem_cloud_requests_total", method="InferStream", code="NOT_FOUND") == 1
    assert delta("cem_cloud_received_bytes_total", dtype="unknown") == 64  # the unparseable bytes
    assert delta("cem_cloud_served_batch_size_sum") == 2  # only the two answered stream messages reached the decoder
    assert delta("cem_cloud_sent_bytes_total", dtype="float32") > 0
    assert value(after, "cem_cloud_requests_in_flight") == 0


def test_two_servers_in_one_process_keep_their_own_registries(
    start_server, cem_bundle: Path, legacy_bundle: Path
) -> None:
    busy = start_server(cem_bundle, metrics_listen="127.0.0.1:0")
    idle = start_server(legacy_bundle, metrics_listen="127.0.0.1:0")
    channel, stub = open_stub(busy.port)
    with channel:
        for _ in range(3):
            stub.Infer(infer_request(1), timeout=10)
    assert value(scrape(busy), "cem_cloud_requests_total", method="Infer", code="OK") == 3
    idle_samples = scrape(idle)
    assert value(idle_samples, "cem_cloud_requests_total", method="Infer", code="OK") == 0
    assert {dict(labels)["model_id"] for labels in series(idle_samples, "cem_cloud_noise_std")} == {
        load_manifest(legacy_bundle).model_id}


def test_metric_names_follow_prometheus_conventions(start_server, cem_bundle: Path) -> None:
    server = start_server(cem_bundle, metrics_listen="127.0.0.1:0")
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    ours = {name: kind for name, kind in families.items()
            if name.startswith("cem_cloud_") and not name.endswith("_created")}  # prometheus_client's own extra
    assert ours == {
        "cem_cloud_requests": "counter", "cem_cloud_received_bytes": "counter", "cem_cloud_sent_bytes": "counter",
        "cem_cloud_request_duration_seconds": "histogram", "cem_cloud_queue_wait_seconds": "histogram",
        "cem_cloud_decoder_seconds": "histogram", "cem_cloud_served_batch_size": "histogram",
        "cem_cloud_requests_in_flight": "gauge", "cem_cloud_noise_std": "gauge", "cem_cloud_cem_lambda": "gauge",
        "cem_cloud_privacy_bound_xi": "gauge",
    }
    assert "# TYPE cem_cloud_requests_total counter" in text  # counters end in _total on the wire


@pytest.mark.parametrize("listen", ["9100", "localhost", ":9100", "127.0.0.1:99999", "127.0.0.1:-1", "h:9x"])
def test_a_bad_metrics_address_is_refused_at_start_up(cem_bundle: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-listen HOST:PORT"):
        ServerSettings(bundle_dir=cem_bundle, metrics_listen=listen)


def test_the_flag_maps_onto_the_settings(cem_bundle: Path) -> None:
    args = get_args_parser().parse_args(["--bundle", str(cem_bundle), "--metrics-listen", "[::1]:0"])
    settings = build_settings(args)
    assert settings.metrics_listen == "[::1]:0" and settings.metrics_address == ("::1", 0)
    assert build_settings(get_args_parser().parse_args(["--bundle", str(cem_bundle)])).metrics_address is None


def test_a_taken_metrics_port_is_an_os_error(cem_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = ServerSettings(bundle_dir=cem_bundle, port=0, device="cpu", metrics_listen=f"127.0.0.1:{port}")
        with pytest.raises(OSError, match="metrics endpoint"):
            create_server(settings)


def test_cem_cloud_prints_the_metrics_address_before_listening(cem_bundle: Path, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "cloud_server.cli", "--bundle", str(cem_bundle), "--port", "0", "--device", "cpu",
            "--threads", "1", "--metrics-listen", "127.0.0.1:0"]
    with ServiceProcess.start(argv, log_path=tmp_path / "cloud.log", name="cem-cloud", timeout_s=90) as cloud:
        lines = cloud.stdout_lines()
        assert len(lines) == 2 and lines[0].startswith("METRICS 127.0.0.1:") and lines[1].startswith("LISTENING")
        address = lines[0].split()[1]
        text = httpx.get(f"http://{address}/metrics", timeout=10).text
        assert f'cem_cloud_noise_std{{model_id="{load_manifest(cem_bundle).model_id}"}} 0.2' in text
