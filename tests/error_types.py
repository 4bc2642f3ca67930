"""Every subclass of ``cem.errors.CEMError`` in the project, for the tests that map each to a status.

A subclass exists only once its module is imported, so every module of every
package is imported first: an error type added anywhere is found without
anyone listing it.
"""

from __future__ import annotations

import importlib
import pkgutil

from cem.errors import CEMError

PACKAGES = ("cem", "cloud_server", "edge_client", "attacker", "training", "demo")


def import_every_module(packages: tuple[str, ...] = PACKAGES) -> None:
    for name in packages:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if not module.name.endswith(".__main__"):  # running a __main__ is not importing it
                importlib.import_module(module.name)


def all_cem_errors() -> list[type[CEMError]]:
    """Every subclass of ``CEMError`` the project's packages define (not the base itself), sorted by name."""
    import_every_module()
    found: set[type[CEMError]] = set()
    pending = [CEMError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            if subclass not in found:
                found.add(subclass)
                pending.append(subclass)
    return sorted((t for t in found if t.__module__.split(".")[0] in PACKAGES), key=qualified_name)


def qualified_name(error_type: type) -> str:
    return f"{error_type.__module__}.{error_type.__qualname__}"


def make_error(error_type: type[CEMError], message: str) -> CEMError:
    """An instance whose ``args`` are ``(message,)``, whatever the class's ``__init__`` wants."""
    return error_type.__new__(error_type, message)
