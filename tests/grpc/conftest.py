"""Fixtures of the gRPC area: real servers on 127.0.0.1 port 0, real channels, bundle copies."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from cloud_server import CloudServer, ServerSettings, create_server

StartServer = Callable[..., CloudServer]


@pytest.fixture
def start_server(digits_bundle: Path) -> Iterator[StartServer]:
    """Start in-process cloud servers (``start_server(max_batch=..., ...)``), all stopped at teardown."""
    servers: list[CloudServer] = []

    def start(bundle_dir: Path | None = None, **overrides: object) -> CloudServer:
        settings = ServerSettings(bundle_dir=bundle_dir or digits_bundle, host="127.0.0.1", port=0, device="cpu",
                                  **overrides)  # type: ignore[arg-type]
        server, _ = create_server(settings)
        servers.append(server)
        server.start()
        assert server.wait_until_serving(30), "server did not reach SERVING"
        return server

    yield start
    for server in servers:
        server.stop(0).wait(10)


@pytest.fixture(scope="module")
def shared_server(digits_bundle: Path) -> Iterator[CloudServer]:
    """One server with small limits (max_batch 64, 256 KiB messages) shared by a module's tests."""
    settings = ServerSettings(bundle_dir=digits_bundle, port=0, device="cpu", max_batch=64,
                              max_message_bytes=256 * 1024, max_delay_ms=5)
    server, _ = create_server(settings)
    server.start()
    assert server.wait_until_serving(30)
    yield server
    server.stop(0).wait(10)


@pytest.fixture
def bundle_copy(digits_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the digits bundle that a test may damage."""
    return Path(shutil.copytree(digits_bundle, tmp_path / "bundle"))
