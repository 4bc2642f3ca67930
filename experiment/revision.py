"""Which code made a cell: the git commit of the tree the runner's children import, marked when that tree had
uncommitted changes to the code.

A cell's key is its configuration, not the code (``experiment.cells``), so a grid run a slice per sitting can mix
cells made by several revisions of the code, and a retrained cell can change with it (docs/training.md records
one whose weights did). Each record keeps the revision that made it (``code_revision``); the report counts them
and says so when a table stands on more than one. The revision is that of the code the children import, which is
not always the code the runner itself imports (``code_root``).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# the packages cem-train and cem-attack import (the import contract: the kernel and the two apps; a test keeps this
# exact); a change elsewhere (docs, results kept in git) does not make a tree dirty
CODE_PACKAGES = ("cem", "protos", "training", "attacker")
DIRTY = "+dirty"
NOT_RECORDED = "not recorded"  # a record from before the field, or a revision nobody could tell (code_revision)
LOOKUP_TIMEOUT_S = 30.0
ROOT_LOOKUP = f"import importlib.util; print(importlib.util.find_spec({CODE_PACKAGES[0]!r}).origin)"


def code_root(python: str, env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """The folder the cells' children import the code from, asked of a child started as they are (``python``,
    ``env``, ``cwd``): ``python -m`` puts its working directory first on the path, so a runner installed from one
    checkout and started in another runs the other's code. None when it cannot be told."""
    try:
        done = subprocess.run([python, "-c", ROOT_LOOKUP], env=dict(env), cwd=cwd, capture_output=True, text=True,
                              timeout=LOOKUP_TIMEOUT_S, check=False)
        origin = done.stdout.strip()
        return Path(origin).resolve().parent.parent if done.returncode == 0 and origin else None
    except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired):  # ValueError: undecodable output
        return None


def _git(root: Path, *args: str) -> str | None:
    """git's stdout, None when it failed. ``--no-optional-locks``: ``status`` would otherwise refresh the index
    under its lock, and a grid that runs for days would now and then fail its user's own ``git commit``."""
    try:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=LOOKUP_TIMEOUT_S, check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def code_revision(root: Path | None) -> str | None:
    """``<commit>`` or ``<commit>+dirty`` of the git tree whose top is ``root`` (``code_root``); None when ``root``
    is unknown or not the top of a git tree (an installed wheel, a virtual environment inside a repository), or
    git cannot tell (not installed, a repository it refuses as another user's)."""
    if root is None:
        return None
    head = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = head.splitlines() if head is not None else []
    try:
        if len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
            return None
    except (OSError, RuntimeError):  # a symbolic-link loop
        return None
    changes = _git(root, "status", "--porcelain", "--", *CODE_PACKAGES)
    if changes is None:
        return None
    return lines[1] + (DIRTY if changes.strip() else "")


def revision_counts(records: Iterable[Mapping[str, Any] | None]) -> dict[str, int]:
    """How many stored records each code revision made, the most first; ``NOT_RECORDED`` counts those without."""
    counts: Counter[str] = Counter()
    for record in records:
        if record is not None:
            revision = record.get("code_revision")
            counts[revision if isinstance(revision, str) else NOT_RECORDED] += 1
    return dict(counts.most_common())


def short(revision: str) -> str:
    """A revision as tables show it: the commit's first 12 characters, keeping the dirty mark."""
    if revision == NOT_RECORDED:
        return revision
    commit, dirty, _ = revision.partition(DIRTY)
    return commit[:12] + dirty


def mixed_note(counts: Mapping[str, int]) -> str | None:
    """The report's note when the stored cells are not all from one commit's clean code; None when they are."""
    commits = {revision.partition(DIRTY)[0] for revision in counts if revision != NOT_RECORDED}
    dirty = sum(cells for revision, cells in counts.items() if revision.endswith(DIRTY))
    unrecorded = counts.get(NOT_RECORDED, 0)
    if len(commits) <= 1 and not dirty and not unrecorded:
        return None
    parts = []
    if len(commits) > 1:
        parts.append(f"the stored cells come from {len(commits)} commits of the code")
    if dirty:
        parts.append(f"{dirty} cell(s) ran uncommitted changes to the code (+dirty: the commit does not identify "
                     "that code)")
    if unrecorded:
        parts.append(f"{unrecorded} cell(s) have no recorded code revision")
    listed = ", ".join(f"{short(revision)}: {cells}" for revision, cells in counts.items())
    return "; ".join(parts) + f" ({listed}; a cell's key holds its configuration, not its code; cost.md)"


def revision_markdown(counts: Mapping[str, int]) -> str:
    """The stored cells per code revision, as the Markdown table cost.md ends with; empty when none is stored."""
    if not counts:
        return ""
    lines = ["", "code revision | cells", "--- | ---"]
    lines += [f"{short(revision)} | {cells}" for revision, cells in counts.items()]
    return "\n".join(lines) + "\n"
