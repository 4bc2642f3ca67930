"""The committed stubs match a fresh generation from protos/cem_split.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos.generate import REPO_ROOT, generate


@pytest.mark.parametrize("name", ["cem_split_pb2.py", "cem_split_pb2.pyi", "cem_split_pb2_grpc.py"])
def test_committed_stubs_are_not_stale(tmp_path: Path, name: str) -> None:
    generate(tmp_path)
    fresh = (tmp_path / "protos" / name).read_text()
    committed = (REPO_ROOT / "protos" / name).read_text()
    assert fresh == committed, f"protos/{name} is stale: run `python -m protos.generate` and commit the result"
