"""The compose stack's replicated cloud, checked without an engine: two replicas of cloud-sigma-only behind its one
name on a network of its own, one on the host's network, and the tap dialling the name (docs/scale.md, "Replicated
cloud"). ``docker-compose config`` (Debian's 1.29, where installed) must merge the files the same way."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cem.targets import parse_target

ROOT = Path(__file__).resolve().parents[2]
REPLICATED = "cloud-sigma-only"
OVERRIDES = {"override": "docker-compose.override.yml", "host": "docker-compose.host.yml",
             "gpu": "docker-compose.gpu.yml"}


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _replicas(service: dict) -> int:
    return int(service.get("deploy", {}).get("replicas", 1))


def test_one_cloud_runs_two_replicas_and_the_other_one_for_the_kill_test() -> None:
    services = _load("docker-compose.yml")["services"]
    assert _replicas(services[REPLICATED]) == 2
    # tests/compose kills cloud-sigma-cem and expects the edge to fail: it stays a single replica.
    assert {name for name, service in services.items() if _replicas(service) != 1} == {REPLICATED}
    assert "container_name" not in services[REPLICATED]  # a fixed name would allow only one container


def test_the_tap_dials_the_replicated_name_so_grpc_balances_over_every_address_it_resolves_to() -> None:
    services = _load("docker-compose.yml")["services"]
    tap = services["tap-sigma-only"]["command"]
    upstream = parse_target(tap[tap.index("--upstream") + 1], "--upstream")
    cloud = services[REPLICATED]["command"]
    assert upstream.scheme == "dns"  # one name, every address Docker's DNS answers (cem.targets)
    assert upstream.addresses == (f"{REPLICATED}:{cloud[cloud.index('--port') + 1]}",)


def test_the_host_network_override_runs_one_replica() -> None:
    """On one host network both replicas would listen on one port (SO_REUSEPORT): the kernel would pick, not gRPC."""
    service = _load("docker-compose.host.yml")["services"][REPLICATED]
    assert service["network_mode"] == "host" and _replicas(service) == 1


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize(("overrides", "replicas"), [
    (("override",), 2), (("host",), 1), (("override", "gpu"), 2),
])
def test_docker_compose_merges_the_files_to_that_many_replicas(
    overrides: tuple[str, ...], replicas: int, tmp_path: Path
) -> None:
    env_file = tmp_path / "audit.env"
    env_file.write_text("CEM_AUDIT_TOKEN=x\n")
    files = ["-f", "docker-compose.yml", *[arg for name in overrides for arg in ("-f", OVERRIDES[name])]]
    result = subprocess.run(["docker-compose", *files, "config"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "CEM_AUDIT_ENV_FILE": str(env_file)})
    assert result.returncode == 0, result.stderr[-2000:]
    services = yaml.safe_load(result.stdout)["services"]
    assert _replicas(services[REPLICATED]) == replicas
    assert _replicas(services["cloud-sigma-cem"]) == 1
