"""The kernel's error tree has one home, ``cem.errors``."""

from __future__ import annotations

from error_types import all_cem_errors, qualified_name


def test_every_kernel_error_is_defined_in_cem_errors() -> None:
    kernel = [t for t in all_cem_errors() if t.__module__.split(".")[0] == "cem"]
    assert kernel and [qualified_name(t) for t in kernel if t.__module__ != "cem.errors"] == []
