"""Import direction over every module: the apps meet only in the kernel.

The apps (training, edge_client, cloud_server, attacker, demo, experiment) import the shared
kernel ``cem``, the wire stubs ``protos``, themselves and third-party code, never
each other; ``cem`` and ``protos`` import no app. Every import statement counts,
those inside functions and ``TYPE_CHECKING`` blocks included, as do
``importlib.import_module("...")`` calls with a literal name. The few exceptions
are listed below with their reason, and a test keeps the list exact.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL = ("cem", "protos")
APPS = ("training", "edge_client", "cloud_server", "attacker", "demo", "experiment")
# Importable first-party code that is not a package of the project: never imported by it.
OTHER_FIRST_PARTY = ("benchmarks", "tests")
FIRST_PARTY = (*KERNEL, *APPS, *OTHER_FIRST_PARTY)

# (importing package, imported module) -> why. The module must be named exactly (its submodules are not allowed).
EXCEPTIONS = {
    ("demo", "attacker.client"): (
        "the demo is the orchestrator: it starts every part as a process through its console script and "
        "drives the audit service over REST with the service's own client, whose package also exports the "
        "API vocabulary (attack names, audit statuses, AuditView) the demo reads"
    ),
}


def _modules(package: str) -> Iterator[tuple[Path, str]]:
    """Every .py file of ``package`` with its dotted module name."""
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, name) per imported thing.

    ``from a.b import c`` gives ("a.b", "c"); ``import a.b`` and ``import_module("a.b")`` give ("a.b", None).
    """
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, base, alias.name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, None


def _exception_for(package: str, imported: str, name: str | None) -> tuple[str, str] | None:
    for key in ((package, imported), (package, f"{imported}.{name}")):
        if key in EXCEPTIONS:
            return key
    return None


def _violations(package: str) -> tuple[list[str], set[tuple[str, str]]]:
    """Forbidden imports of ``package`` ("file:line imports x") and the exceptions it relies on."""
    allowed = {package, *KERNEL} if package in APPS else set(KERNEL)
    found: list[str] = []
    used: set[tuple[str, str]] = set()
    for path, module in _modules(package):
        for line, imported, name in _imports(path, module):
            top = imported.split(".")[0]
            if top not in FIRST_PARTY or top in allowed:
                continue
            exception = _exception_for(package, imported, name)
            if exception is not None:
                used.add(exception)
                continue
            what = imported if name is None else f"{imported}.{name}"
            found.append(f"{path.relative_to(REPO)}:{line} imports {what}")
    return found, used


@pytest.mark.parametrize("package", [*KERNEL, *APPS])
def test_package_imports_only_the_kernel_itself_and_third_party(package: str) -> None:
    assert any(True for _ in _modules(package)), f"no modules found under {package}/"
    found, _ = _violations(package)
    rule = "no app" if package in KERNEL else f"only {', '.join(KERNEL)}, {package} and third-party code"
    assert not found, f"{package} may import {rule}; move what two apps share into cem:\n" + "\n".join(found)


def test_every_listed_exception_is_still_needed() -> None:
    used = set().union(*(_violations(package)[1] for package in APPS))
    assert set(EXCEPTIONS) == used, f"stale exceptions, remove them: {sorted(set(EXCEPTIONS) - used)}"


def test_the_scan_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\n"
        "def f():\n"
        "    from cloud_server import create_server\n"
        "    importlib.import_module('training.cli')\n"
        "from . import sibling\n"
    )
    got = {(imported, name) for _, imported, name in _imports(source, "edge_client.sub.mod")}
    assert got == {
        ("os", None), ("cloud_server", "create_server"), ("training.cli", None), ("edge_client.sub", "sibling")
    }


def test_the_tap_entry_point_imports_no_torch() -> None:
    # The tap sits on the wire in front of the cloud: it must start fast and stay small.
    script = "import sys, attacker.tap.cli; assert 'torch' not in sys.modules, 'attacker.tap.cli imported torch'"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
