"""The install extras per role: the tap's and the REST client's install no torch, and their commands run there.

Each case builds a fresh virtual environment and installs this checkout with one
extra from the package index, as a user of that role would (about 20 s each).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

REPO = Path(__file__).resolve().parents[1]
# The commands each torch-free role runs (the client image also runs the compose stack's report).
TORCH_FREE = {"tap": ("cem-tap",), "client": ("cem-audit-client", "cem-demo-report")}


def extras() -> dict[str, list[str]]:
    with open(REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["optional-dependencies"]


def test_every_role_has_an_extra_and_all_holds_them() -> None:
    declared = extras()
    roles = {"tap", "client", "edge", "cloud", "audit", "train", "experiment"}
    assert roles <= set(declared)
    assert declared["all"] == [f"cem-split[{','.join(sorted(roles, key=list(declared).index))}]"]
    assert not any("scikit-image" in requirement for role in roles for requirement in declared[role])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("extra", sorted(TORCH_FREE))
def test_a_torch_free_role_installs_and_runs_without_torch(extra: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{REPO}[{extra}]"],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = "import importlib.util; print(importlib.util.find_spec('torch') is not None)"
    has_torch = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True
    )
    assert has_torch.stdout.strip() == "False"
    for program in TORCH_FREE[extra]:
        command = subprocess.run([str(venv / "bin" / program), "--help"], capture_output=True, text=True)
        assert command.returncode == 0, command.stderr[-2000:]
        assert command.stdout.startswith(f"usage: {program}")
