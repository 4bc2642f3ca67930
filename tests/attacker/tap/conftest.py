"""Fixtures of the tap area: a real cloud server in-process, a real tap as a child process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tap_helpers import TapProcess, start_tap

from cem.bundle import load_manifest
from cloud_server import CloudServer, ServerSettings, create_server


@pytest.fixture(scope="module")
def cloud(digits_bundle: Path) -> Iterator[CloudServer]:
    """The real decoder service for the digits bundle on 127.0.0.1:<ephemeral>."""
    server, _ = create_server(ServerSettings(bundle_dir=digits_bundle, port=0, device="cpu", max_delay_ms=1))
    server.start()
    assert server.wait_until_serving(60), "cloud server did not reach SERVING"
    yield server
    server.stop(0).wait(10)


@pytest.fixture(scope="module")
def cloud_address(cloud: CloudServer) -> str:
    return f"127.0.0.1:{cloud.port}"


@pytest.fixture(scope="module")
def model_id(digits_bundle: Path) -> str:
    return load_manifest(digits_bundle).model_id


@pytest.fixture
def tap(cloud_address: str, tmp_path: Path) -> Iterator[Callable[..., TapProcess]]:
    """``tap(*extra_args)`` starts cem-tap in front of the cloud, recording into tmp_path/captures."""
    started: list[TapProcess] = []

    def start(*extra: str) -> TapProcess:
        process = start_tap(cloud_address, tmp_path / "captures", tmp_path / f"tap-{len(started)}.log", *extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def channels() -> Iterator[Callable[[str], grpc.Channel]]:
    opened: list[grpc.Channel] = []

    def open_channel(address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        channel.close()
