"""What every test area shares: one thread policy, one classifier cache, and the fixture plugins.

Layout: ``tests/<package>/`` mirrors the project's packages (``tests/cem``,
``tests/cloud_server``, ``tests/edge_client``, ``tests/attacker/{tap,service,
attacks,client}``, ``tests/training``, ``tests/demo``, ``tests/protos``,
``tests/benchmarks``; ``tests/fuzz`` holds the bounded fuzz campaign).

Helpers are imported by name. Test folders have no ``__init__.py``, so pytest
(default ``prepend`` import mode) puts the folder of each conftest and test
module on ``sys.path``: the helpers in this folder (``bundle_fixtures``,
``server_fixtures``, ``grpc_helpers``, ``polling``, ``error_types``,
``cifar_format``, ``image_folder_format``, ``tinyimagenet_format``,
``gloo_ranks``, ``nproc_cli``, ``replica_helpers``) import from every test,
``service_helpers`` from ``tests/attacker/**``, ``tap_helpers``,
``relay_helpers`` and ``h2_frames`` from ``tests/attacker/tap``,
``browser`` and ``console_helpers`` from ``tests/attacker/console``,
``synthetic_split`` from ``tests/attacker/attacks``, ``experiment_helpers``
from ``tests/experiment``. Test file names must therefore be unique across the
suite. ``pythonpath = ["."]`` (pyproject) puts the repository root on the path
whatever the working directory, so ``import cem`` finds the package, not the
folder ``tests/cem`` (a namespace portion, which a package always beats).

Markers (registered in pyproject): ``e2e`` for tests that start the whole
pipeline, the demo or several cooperating service processes end to end;
``slow`` for tests that take over ~10 s. ``make test-fast`` runs ``-m "not e2e"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest_plugins = ("bundle_fixtures", "server_fixtures")

# Honoured by torch (OpenMP), MKL and OpenBLAS in every child process the tests start.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread_per_process() -> Iterator[None]:
    """The suite's one thread policy: torch on one intra-op thread here and in every child process.

    The models are tiny and the services under test run as several processes at
    once; on a shared 2-core machine a second intra-op thread per process only
    spins against the others. Training the ``digits_bundle`` model took 8.6 s on
    one thread and 18.2 s on two with two other busy processes on the machine
    (idle: 6.0 s and 3.6 s). Children inherit the environment, so the clouds,
    taps, audit services and workers the tests start follow it too.
    """
    previous = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for name in THREAD_ENV:
            patch.setenv(name, "1")
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def shared_classifier_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One evaluation-classifier cache (``CEM_CACHE_DIR``) for the session, its xdist workers and the processes
    they start, never the user's ``~/.cache``. Its entries are keyed by their data and settings
    (``attacker.attacks.classifier_cache``), so sharing one between tests changes no result: the audits of the
    digits split stop training the same classifiers again, one of the suite's larger fixed costs."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cem-cache"
    folder.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CEM_CACHE_DIR", str(folder))
        yield folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files holding ``e2e`` tests first, then those holding ``slow`` ones; each file's tests stay together.

    ``make test`` hands whole files to pytest-xdist workers in collection order;
    a long file handed out last would finish alone while the other worker idles.
    Longest first keeps both busy to the end. The sort is stable, so tests keep
    their order within a file.
    """
    rank: dict[Path, int] = {}
    for item in items:
        weight = 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2
        rank[item.path] = min(rank.get(item.path, 2), weight)
    items.sort(key=lambda item: rank[item.path])
