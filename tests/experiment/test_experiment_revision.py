"""Which code made a cell: a real git tree's commit, marked dirty only by changes to the code the cells import,
and the report's count of the revisions behind a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.report import build_table1
from experiment.revision import (
    CODE_PACKAGES,
    NOT_RECORDED,
    code_revision,
    code_root,
    mixed_note,
    revision_counts,
    revision_markdown,
)
from experiment.tables import write_tables


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A git tree with the code packages and a docs folder, committed, under a folder whose name has a space."""
    root = tmp_path / "a checkout" / "tree"
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
    index = tree / ".git" / "index"
    before = index.stat().st_mtime_ns
    (tree / "cem" / "__init__.py").touch()  # a stat change that `git status` would record in the index, locking it
    code_revision(tree)
    assert index.stat().st_mtime_ns == before, "the lookup rewrote the index: a user's git commit could fail on it"


def test_the_code_packages_are_what_the_cells_import() -> None:
    """``CODE_PACKAGES`` is the first-party code cem-train and cem-attack load, so no change to it goes unmarked."""
    probe = ("import sys, training.cli, attacker.cli; "
             "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            timeout=120).stdout.split()
    first_party = {"cem", "protos", "training", "attacker", "edge_client", "cloud_server", "demo", "experiment"}
    assert first_party & set(loaded) == set(CODE_PACKAGES)


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
    records = [{"code_revision": clean}, {"code_revision": clean}, {"code_revision": other + "+dirty"}, {}, None,
               {"code_revision": 7}]
    counts = revision_counts(records)
    assert counts == {clean: 2, other + "+dirty": 1, NOT_RECORDED: 2}  # None: not stored; a non-string: unrecorded
    assert list(counts) == [clean, NOT_RECORDED, other + "+dirty"]  # the most first
    assert mixed_note(counts) == (
        "the stored cells come from 2 commits of the code; 1 cell(s) ran uncommitted changes to the code (+dirty: "
        "the commit does not identify that code); 2 cell(s) have no recorded code revision (aaaaaaaaaaaa: 2, "
        "not recorded: 2, bbbbbbbbbbbb+dirty: 1; a cell's key holds its configuration, not its code; cost.md)")
    assert mixed_note({clean: 9}) is None  # one commit's clean code: nothing to say
    assert mixed_note({}) is None
    assert mixed_note({NOT_RECORDED: 9}) == ("9 cell(s) have no recorded code revision (not recorded: 9; a cell's "
                                             "key holds its configuration, not its code; cost.md)")
    dirty = mixed_note({clean: 3, clean + "+dirty": 1})  # one commit, partly dirty
    assert dirty is not None and dirty.startswith("1 cell(s) ran uncommitted changes")
    assert revision_markdown({}) == ""
    assert revision_markdown({clean: 2}).splitlines()[1:] == ["code revision | cells", "--- | ---", "aaaaaaaaaaaa | 2"]


def test_table1_carries_the_revisions_note_in_markdown_and_json(tmp_path: Path) -> None:
    """The note reaches table1.md's notes and table1.json's rendered notes, the same sentence in both."""
    table = build_table1([], ["Bottleneck"], ["decoder"])
    counts = {"a" * 40: 3, NOT_RECORDED: 1}
    paths = write_tables(table, tmp_path, "grid", {"code_revisions": counts})
    note = mixed_note(counts)
    assert note is not None and f"* {note}" in paths["md"].read_text()
    written = json.loads(paths["json"].read_text())
    assert written["code_revisions"] == counts and note in written["rendered"]["notes"]
    clean = write_tables(table, tmp_path / "clean", "grid", {"code_revisions": {"a" * 40: 4}})
    assert "code revision" not in clean["md"].read_text()
