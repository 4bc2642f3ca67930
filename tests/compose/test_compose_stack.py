"""The compose stack for real, in containers: it ends with the table, and a cloud killed under traffic is reported.

Run by ``make compose-test`` (``CEM_COMPOSE_TEST=1``); skipped otherwise, and where
no Docker engine answers. It builds every role's image, brings the whole stack up
under a project name of its own (small settings: two training epochs, the tiny
audit profile), waits for the ``report`` service, and checks its table. Then it
kills a cloud while an edge is sending, one image per request: the edge retries,
then stops with UNAVAILABLE and says how many images were answered, and the tap
captured exactly those. With the cloud started again, an edge run succeeds. All
containers, volumes and the network are removed at the end.

On hosts without a bridge network (``../shared/tools/docker-here``) it uses
``docker-compose.host.yml``; build arguments (``BASE_IMAGE``, ``TORCH_INDEX_URL``)
come from the environment.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from polling import wait_for

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
AUDIT_URL = "http://127.0.0.1:8000"
STACK_PORTS = (50051, 50052, 50061, 50062, 8000)
BUILD_TIMEOUT_S = 3000
UP_TIMEOUT_S = 1200
EDGE_RETRY_BUDGET_S = 8.0
TRAIN_IMAGES = 1258  # digits' training split


def _compose_command() -> list[str] | None:
    """``docker compose`` (v2) where the plugin exists, else Debian's ``docker-compose``; None without an engine."""
    if shutil.which("docker") is None:
        return None
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return None
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _compose_files() -> list[Path]:
    """The default override (published port) on a bridge network; the host-network override without one."""
    bridge = subprocess.run(["docker", "network", "inspect", "bridge"], capture_output=True, timeout=60)
    override = "docker-compose.override.yml" if bridge.returncode == 0 else "docker-compose.host.yml"
    return [ROOT / "docker-compose.yml", ROOT / override]


@dataclass
class Stack:
    command: list[str]
    env: dict[str, str]
    out: Path
    token: str

    def compose(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.command, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout_s)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def captured_requests(self, model_id: str) -> int:
        answer = httpx.get(f"{AUDIT_URL}/v1/captures", headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        answer.raise_for_status()
        return sum(model["requests"] for model in answer.json()["models"] if model["model_id"] == model_id)

    def edge(self, *options: str, timeout_s: float = 600) -> subprocess.Popen[str]:
        """One more ``cem-edge eval`` of the σ+CEM model through its tap, in a container of the edge service."""
        argv = [*self.command, "run", "--rm", "--no-deps", "-T", "edge-sigma-cem", "cem-edge", "eval", "--server",
                "tap-sigma-cem:50052", "--bundle", "/bundles/sigma-cem", "--dataset", "digits", "--sample-ids",
                "--json", *options]
        return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.environ.get("CEM_COMPOSE_TEST") != "1":
        pytest.skip("the container test runs with `make compose-test` (CEM_COMPOSE_TEST=1)")
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker engine answers `docker info` (or no compose); see README, 'The compose demo'")
    busy = [port for port in STACK_PORTS if _port_in_use(port)]
    if busy:
        pytest.skip(f"the stack's ports {busy} are in use on this host")
    root = tmp_path_factory.mktemp("compose")
    token = secrets.token_hex(16)
    (root / "audit.env").write_text(f"CEM_AUDIT_TOKEN={token}\n")
    out = root / "demo-out"
    out.mkdir()
    env = {**os.environ, "COMPOSE_PROJECT_NAME": f"cem-split-test-{secrets.token_hex(3)}",
           "COMPOSE_FILE": os.pathsep.join(map(str, _compose_files())), "CEM_AUDIT_ENV_FILE": str(root / "audit.env"),
           "CEM_DEMO_OUT": str(out), "CEM_UID": str(os.getuid()), "CEM_GID": str(os.getgid()),
           "CEM_TRAIN_ARGS": "--epochs 2 --width 0.25", "CEM_DEMO_PROFILE": "tiny"}
    stack = Stack(command, env, out, token)
    try:
        stack.compose("build", timeout_s=BUILD_TIMEOUT_S)
        stack.compose("up", "-d", timeout_s=UP_TIMEOUT_S)
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout_s=300, check=False)


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_stack_ends_with_the_table_of_both_models_and_both_attacks(stack: Stack) -> None:
    report = stack.container("report")
    status = subprocess.run(["docker", "wait", report], capture_output=True, text=True, timeout=UP_TIMEOUT_S)
    logs = stack.compose("logs", "--no-color", "report").stdout
    assert status.stdout.strip() == "0", logs[-4000:]
    table = (stack.out / "table.txt").read_text()
    rows = [line.split()[:2] for line in table.splitlines()[2:6]]
    assert rows == [["sigma-only", "decoder"], ["sigma-only", "gan"], ["sigma-cem", "decoder"], ["sigma-cem", "gan"]]
    assert table.splitlines()[0] in logs  # printed too, not only written
    summary = json.loads((stack.out / "summary.json").read_text())
    for model in summary["models"]:
        assert model["wire_images"] == 539 and model["captured_samples"] >= 539, model["name"]
        for attack in ("decoder", "gan"):
            for column in ("train", "infer", "captured"):
                assert model["audits"][attack][column]["mse"] > 0, (model["name"], attack, column)
            assert (stack.out / "reports" / f"{model['name']}-{attack}.png").stat().st_size > 0
    # The auditor stays up for the user once the report is done.
    assert httpx.get(f"{AUDIT_URL}/healthz", timeout=10).status_code == 200


def test_a_cloud_killed_under_traffic_is_retried_then_reported_and_the_capture_count_matches(stack: Stack) -> None:
    model_id = json.loads((stack.out / "summary.json").read_text())["models"][1]["model_id"]
    before = stack.captured_requests(model_id)
    # The training split, one image per request: seconds of traffic, with the cloud killed early in it.
    edge = stack.edge("--split", "train", "--batch-size", "1", "--timeout-s", str(EDGE_RETRY_BUDGET_S / 2),
                      "--retry-budget", str(EDGE_RETRY_BUDGET_S))

    def sending() -> bool | None:
        if edge.poll() is not None:
            raise AssertionError(f"the edge ended before the cloud was killed:\n{edge.communicate()[1][-3000:]}")
        return stack.captured_requests(model_id) > before or None

    wait_for(sending, 300, "the edge's first requests to reach the tap's captures", interval_s=0.2)
    stack.compose("kill", "cloud-sigma-cem")
    killed_at = time.monotonic()
    stdout, stderr = edge.communicate(timeout=120)
    assert edge.returncode == 1, stderr[-3000:]
    assert time.monotonic() - killed_at < EDGE_RETRY_BUDGET_S + 60  # no hang: the retry budget bounds it
    assert re.search(r"Infer attempt \d+ failed with UNAVAILABLE; retrying", stderr), stderr[-3000:]
    stopped = re.search(rf"the evaluation stopped after (\d+) of {TRAIN_IMAGES} images were answered: Infer failed "
                        r"with UNAVAILABLE", stderr)
    assert stopped, stderr[-3000:]
    answered = int(stopped.group(1))
    assert 0 < answered < TRAIN_IMAGES
    # Every answered request was captured, none more: each has one image, and the tap records answered calls only.
    wait_for(lambda: stack.captured_requests(model_id) == before + answered or None, 60,
             f"the tap's captures to count the {answered} answered requests", interval_s=0.5)

    stack.compose("start", "cloud-sigma-cem")
    wait_for(lambda: _healthy(stack.container("cloud-sigma-cem")) or None, 120, "the restarted cloud to be healthy",
             interval_s=1.0)
    edge = stack.edge("--limit", "32")
    stdout, stderr = edge.communicate(timeout=300)
    assert edge.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["images"] == 32


def _healthy(container: str) -> bool:
    state = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container],
                           capture_output=True, text=True, timeout=60)
    return state.stdout.strip() == "healthy"
