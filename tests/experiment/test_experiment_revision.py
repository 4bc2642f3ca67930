"""Which code made a cell: a real git tree's commit, marked dirty only by changes to the code the cells import,
and the report's count of the revisions behind a table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.revision import (
    CODE_PACKAGES,
    NOT_RECORDED,
    code_revision,
    code_root,
    mixed_note,
    revision_counts,
    revision_markdown,
)


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A git tree with the code packages and a docs folder, committed."""
    root = tmp_path / "tree"
    for folder in (*CODE_PACKAGES, "docs"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("# one\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_the_revision_is_the_commit_and_only_code_changes_make_it_dirty(tree: Path) -> None:
    head = git(tree, "rev-parse", "HEAD")
    assert code_revision(tree) == head
    (tree / "docs" / "__init__.py").write_text("# two\n")  # a results or docs change is not the cells' code
    (tree / "docs" / "new.md").write_text("new\n")
    assert code_revision(tree) == head
    (tree / "training" / "__init__.py").write_text("# two\n")
    assert code_revision(tree) == head + "+dirty"
    git(tree, "checkout", "-q", "--", "training")
    (tree / "attacker" / "extra.py").write_text("x = 1\n")  # a new module the children would import
    assert code_revision(tree) == head + "+dirty"


def test_the_code_root_is_where_a_child_started_like_the_cells_imports_from(tree: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": ""}
    assert code_root(sys.executable, env, cwd=tree) == tree.resolve()  # `python -m` in a checkout: its code
    assert code_root(sys.executable, {**env, "PYTHONPATH": str(tree)}, cwd=tmp_path) == tree.resolve()
    assert code_root(str(tmp_path / "no-python"), env) is None


def test_code_outside_the_top_of_a_git_tree_has_no_revision(tmp_path: Path, tree: Path) -> None:
    assert code_revision(None) is None
    assert code_revision(tmp_path / "wheel") is None  # not a git tree: an installed wheel
    (tmp_path / "wheel").mkdir()
    assert code_revision(tmp_path / "wheel") is None
    assert code_revision(tree / "cem") is None  # inside another tree (a virtual environment in a repository)


def test_the_report_counts_revisions_and_notes_a_table_that_mixes_them() -> None:
    clean, other = "a" * 40, "b" * 40
    records = [{"code": clean}, {"code": clean}, {"code": other + "+dirty"}, {}, None, {"code": 7}]
    counts = revision_counts(records)
    assert counts == {clean: 2, other + "+dirty": 1, NOT_RECORDED: 2}  # None: not stored; a non-string: unrecorded
    assert list(counts) == [clean, NOT_RECORDED, other + "+dirty"]  # the most first
    note = mixed_note(counts)
    assert note is not None and note.startswith("the stored cells come from 3 code revision(s): ")
    assert "aaaaaaaaaaaa (2)" in note and "bbbbbbbbbbbb+dirty (1)" in note and f"{NOT_RECORDED} (2)" in note
    assert mixed_note({clean: 9}) is None  # one clean recorded revision: nothing to say
    assert mixed_note({clean + "+dirty": 9}) is not None and mixed_note({NOT_RECORDED: 9}) is not None
    assert revision_markdown({}) == ""
    assert revision_markdown({clean: 2}).splitlines()[1:] == ["code revision | cells", "--- | ---", "aaaaaaaaaaaa | 2"]
