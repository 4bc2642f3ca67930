"""What can be checked of the compose stack without an engine: the files parse and merge as intended, services
start in the right order and are wired to each other, every image runs as its role, and every command is a real
entry point of this project that answers ``--help``. The stack itself runs in tests/compose (make compose-test)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("sigma-only", "sigma-cem")
# Each service and the Dockerfile target (role image) it runs.
ROLES = {"trainer": "trainer", "auditor": "auditor", "report": "client",
         **{f"{kind}-{model}": kind for kind in ("cloud", "tap", "edge") for model in MODELS}}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    """The console scripts of the installed distribution (``[project.scripts]`` as pip installed them)."""
    entry_points = metadata.distribution("cem-split").entry_points
    return {ep.name: ep.value for ep in entry_points if ep.group == "console_scripts"}


def _commands(service: dict) -> list[list[str]]:
    """Each program a service runs with its arguments (``sh -c`` lines split at ``&&``, output redirects cut)."""
    command = service["command"]
    if command[:2] != ["sh", "-c"]:
        return [command]
    argvs = [shlex.split(part) for part in command[2].split("&&")]
    return [argv[:argv.index(">")] if ">" in argv else argv for argv in argvs if argv[0] != "cat"]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _dockerfile_stages() -> dict[str, str]:
    """Dockerfile stage name -> its lines."""
    stages: dict[str, str] = {}
    for block in re.split(r"^(?=FROM )", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)[1:]:
        name = re.match(r"FROM \S+(?: AS (\S+))?", block)
        stages[name.group(1) if name and name.group(1) else "?"] = block
    return stages


def test_the_project_name_comes_from_dotenv_for_compose_1_29(compose: dict) -> None:
    """Debian's docker-compose 1.29 refuses a top-level ``name:``; both it and Compose v2 read ``.env``."""
    assert "name" not in compose
    settings = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert settings["COMPOSE_PROJECT_NAME"] == "cem-split"


def test_every_service_runs_its_roles_image(compose: dict) -> None:
    assert set(compose["services"]) == set(ROLES)
    stages = _dockerfile_stages()
    for name, service in compose["services"].items():
        target = service["build"]["target"]
        assert (target, service["build"]["context"]) == (ROLES[name], "."), name
        assert service["image"] == f"cem-split/{target}:latest", name
        assert target in stages, f"the Dockerfile has no target {target}"
        assert "\nUSER cem" in stages[target] or stages[target].startswith("FROM light "), target
        assert service["command"], name


def test_light_images_carry_no_torch_and_every_image_runs_unprivileged() -> None:
    stages = _dockerfile_stages()
    assert "USER cem" in stages["light"]
    for role in ("tap", "client"):
        assert stages[role].startswith("FROM light AS"), role
        assert f"/opt/roles/{role} /opt/venv" in stages[role]
    assert "for role in tap client" in stages["light-venvs"] and "torch" not in stages["light-venvs"]
    for role, extra in (("edge", "edge"), ("cloud", "cloud"), ("auditor", "audit"), ("trainer", "train")):
        assert stages[role].startswith("FROM torch AS") and f"[{extra}]" in stages[role], role
        assert "USER cem" in stages[role], role


def test_services_start_in_order(compose: dict) -> None:
    services = compose["services"]
    for model in MODELS:
        assert services[f"cloud-{model}"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
        assert services[f"tap-{model}"]["depends_on"][f"cloud-{model}"]["condition"] == "service_healthy"
        assert services[f"edge-{model}"]["depends_on"][f"tap-{model}"]["condition"] == "service_healthy"
        assert services["report"]["depends_on"][f"edge-{model}"]["condition"] == "service_completed_successfully"
    assert services["auditor"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["report"]["depends_on"]["auditor"]["condition"] == "service_healthy"


def test_each_edge_talks_to_its_tap_and_each_tap_to_its_cloud_on_ports_of_their_own(compose: dict) -> None:
    services = compose["services"]
    listening = {}
    for model in MODELS:
        cloud = _commands(services[f"cloud-{model}"])[0]
        tap = _commands(services[f"tap-{model}"])[0]
        edge = _commands(services[f"edge-{model}"])[0]
        assert _option(tap, "--upstream") == f"cloud-{model}:{_option(cloud, '--port')}"
        assert _option(edge, "--server") == f"tap-{model}:{_option(tap, '--listen').rsplit(':', 1)[1]}"
        assert _option(edge, "--bundle") == _option(cloud, "--bundle") == f"/bundles/{model}"
        assert f"/results/{model}.json" in services[f"edge-{model}"]["command"][2]
        listening[f"cloud-{model}"] = _option(cloud, "--port")
        listening[f"tap-{model}"] = _option(tap, "--listen").rsplit(":", 1)[1]
    listening["auditor"] = _option(_commands(services["auditor"])[0], "--port")
    assert len(set(listening.values())) == len(listening), listening  # one host network holds them all
    report = _commands(services["report"])[0]
    assert _option(report, "--url") == f"http://auditor:{listening['auditor']}"
    assert [a for a, b in zip(report, report[1:], strict=False) if b in ("decoder", "gan")] == ["--attack"] * 2
    # A port other than the image's default is told to its healthcheck.
    defaults = {"cloud": "50051", "tap": "50052"}
    for name, port in listening.items():
        kind = name.split("-")[0]
        if kind in defaults and port != defaults[kind]:
            assert services[name]["environment"]["CEM_HEALTH_PORT"] == port, name


def test_volumes_token_and_results_folder(compose: dict) -> None:
    services = compose["services"]
    assert set(compose["volumes"]) == {"bundles", "captures", "results", "audit-state"}
    for name in ("auditor", "report"):
        assert services[name]["env_file"] == ["${CEM_AUDIT_ENV_FILE:-audit.env}"], name
    assert "${CEM_DEMO_OUT:-./demo-out}:/demo-out" in services["report"]["volumes"]
    assert "CEM_AUDIT_TOKEN=" in (ROOT / "audit.env.example").read_text()


def test_the_default_override_publishes_the_api_and_the_host_override_maps_every_name_dialled(compose: dict) -> None:
    override = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())
    assert override["services"] == {"auditor": {"ports": ["8000:8000"]}}
    host = yaml.safe_load((ROOT / "docker-compose.host.yml").read_text())
    assert set(host["services"]) == set(compose["services"])
    dialled = {re.split(r"[:/]", value.removeprefix("http://"))[0]
               for service in compose["services"].values() for argv in _commands(service)
               for option in ("--upstream", "--server", "--url") if option in argv
               for value in [_option(argv, option)]}
    for name, service in host["services"].items():
        assert service["network_mode"] == "host" and service["build"]["network"] == "host", name
        assert {entry.split(":")[0] for entry in service["extra_hosts"]} == dialled, name
        assert all(entry.endswith(":127.0.0.1") for entry in service["extra_hosts"]), name


def test_gpu_override_builds_the_clouds_on_cuda_and_reserves_a_gpu() -> None:
    override = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    assert set(override["services"]) == {f"cloud-{model}" for model in MODELS}
    for service in override["services"].values():
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert "cuda" in service["build"]["args"]["BASE_IMAGE"] and service["image"] == "cem-split/cloud:cuda"


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


def test_image_healthchecks_use_a_real_probe_module() -> None:
    stages = _dockerfile_stages()
    for role, port in (("cloud", 50051), ("tap", 50052)):
        assert f'CMD python -m cem.grpc_health_probe "localhost:${{CEM_HEALTH_PORT:-{port}}}"' in stages[role], role
    assert "/healthz" in stages["auditor"] and "HEALTHCHECK" in stages["auditor"]
    result = subprocess.run(
        [sys.executable, "-m", "cem.grpc_health_probe", "127.0.0.1:9"], capture_output=True, timeout=30
    )
    assert result.returncode == 1
