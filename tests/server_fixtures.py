"""In-process cloud servers for the tests that talk to one over a real socket (a pytest plugin, loaded
by ``tests/conftest.py``): 127.0.0.1 port 0, real channels, stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_server import CloudServer, ServerSettings, create_server

StartServer = Callable[..., CloudServer]


def serving_clouds(default_bundle: Path, **defaults: object) -> Iterator[StartServer]:
    """The body of a fixture that starts in-process cloud servers (a fixture yields from it):
    ``start(bundle_dir=None, **settings)`` serves ``bundle_dir`` or ``default_bundle`` on 127.0.0.1 port 0
    with ``defaults`` and ``settings`` (the latter win), SERVING when returned; all stopped at teardown."""
    servers: list[CloudServer] = []

    def start(bundle_dir: Path | None = None, **overrides: object) -> CloudServer:
        chosen: dict[str, object] = {"host": "127.0.0.1", "port": 0, "device": "cpu", **defaults, **overrides}
        settings = ServerSettings(bundle_dir=bundle_dir or default_bundle, **chosen)  # type: ignore[arg-type]
        server, _ = create_server(settings)
        servers.append(server)
        server.start()
        assert server.wait_until_serving(30), "server did not reach SERVING"
        return server

    yield start
    for server in servers:
        server.stop(0).wait(10)


@pytest.fixture
def start_server(digits_bundle: Path) -> Iterator[StartServer]:
    """Start in-process cloud servers (``start_server(max_batch=..., ...)``), all stopped at teardown."""
    yield from serving_clouds(digits_bundle)

