"""The compose demo cannot run here (no Docker engine), so check what can be checked:
the file parses, the services start in the right order, and every command is a
real entry point of this project that answers ``--help``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"trainer", "cloud", "tap", "auditor", "edge"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    """The console scripts of the installed distribution (``[project.scripts]`` as pip installed them)."""
    entry_points = metadata.distribution("cem-split").entry_points
    return {ep.name: ep.value for ep in entry_points if ep.group == "console_scripts"}


def _commands(service: dict) -> list[list[str]]:
    command = service["command"]
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command]


def test_the_project_name_comes_from_dotenv_for_compose_1_29(compose: dict) -> None:
    """Debian's docker-compose 1.29 refuses a top-level ``name:``; both it and Compose v2 read ``.env``."""
    assert "name" not in compose
    settings = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert settings["COMPOSE_PROJECT_NAME"] == "cem-split"


def test_compose_has_the_five_services_with_build_and_commands(compose: dict) -> None:
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        assert service["build"]["context"] == ".", name
        assert service["command"], name


def test_services_start_in_order(compose: dict) -> None:
    services = compose["services"]
    assert services["cloud"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["tap"]["depends_on"]["cloud"]["condition"] == "service_healthy"
    assert services["edge"]["depends_on"]["tap"]["condition"] == "service_healthy"
    assert services["auditor"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    for name in ("cloud", "tap", "auditor"):
        assert services[name]["healthcheck"]["test"], name


def test_volumes_token_and_ports(compose: dict) -> None:
    services = compose["services"]
    assert set(compose["volumes"]) == {"bundles", "captures", "audit-state"}
    assert "audit.env" in services["auditor"]["env_file"]
    assert "8000:8000" in services["auditor"]["ports"]
    example = (ROOT / "audit.env.example").read_text()
    assert "CEM_AUDIT_TOKEN=" in example


def test_gpu_override_reserves_a_gpu_for_the_cloud() -> None:
    override = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    devices = override["services"]["cloud"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


HELP_EACH = textwrap.dedent("""
    import contextlib, importlib, io, json, sys
    answers = {}
    for entry, target in json.loads(sys.argv[1]).items():
        program, *sub = entry.split()
        module, func = target.split(":")
        sys.argv = [program, *sub, "--help"]
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            try:
                code = getattr(importlib.import_module(module), func)()
            except SystemExit as exit:
                code = exit.code
        answers[entry] = [code, output.getvalue()]
    print(json.dumps(answers))
""")


def test_every_command_is_an_installed_entry_point_that_answers_help(compose: dict, scripts: dict) -> None:
    seen: set[str] = set()
    for service in compose["services"].values():
        for argv in _commands(service):
            program = argv[0]
            assert program in scripts, f"{program} is not a console script of this project"
            if argv[1:2] and not argv[1].startswith("-"):
                seen.add(f"{program} {argv[1]}")
            seen.add(program)
    # One fresh interpreter runs every command's main with --help, as its console script would: one torch
    # import instead of one per command.
    commands = {entry: scripts[entry.split()[0]] for entry in sorted(seen)}
    result = subprocess.run([sys.executable, "-c", HELP_EACH, json.dumps(commands)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(answers) == seen
    for entry, (code, output) in answers.items():
        assert code in (0, None), f"{entry} --help exited with {code}: {output[-2000:]}"
        assert "usage" in output.lower(), entry


def test_healthchecks_use_a_real_probe_module(compose: dict) -> None:
    for name in ("cloud", "tap"):
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "cem.grpc_health_probe"], name
    result = subprocess.run(
        [sys.executable, "-m", "cem.grpc_health_probe", "127.0.0.1:9"], capture_output=True, timeout=30
    )
    assert result.returncode == 1
