"""Which code produced a cell: the git commit of the tree the runner's children import, marked when that tree
had uncommitted changes to the code.

A cell's key is its configuration, not the code (``experiment.cells``), so a grid run a slice per sitting can mix
cells made by several revisions of the code, and a retrained cell can change with it (docs/training.md records
one whose weights did). Each record keeps the revision that made it (``code``); the report counts them and says
so when a table stands on more than one. The revision is that of the code the children import,
which is not always the code the runner itself imports (``code_root``).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# what cem-train and cem-attack import; a change elsewhere (docs, results kept in git) does not mark a tree dirty
CODE_PACKAGES = ("cem", "training", "attacker", "protos")
DIRTY = "+dirty"
NOT_RECORDED = "not recorded"  # a record from before this field, or code outside a git tree (an installed wheel)
PROBE_TIMEOUT_S = 30.0
ROOT_PROBE = f"import importlib.util; print(importlib.util.find_spec({CODE_PACKAGES[0]!r}).origin)"


def code_root(python: str, env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """The folder the cells' children import the code from, asked of a child started as they are (``python``,
    ``env``, ``cwd``): ``python -m`` puts its working directory first on the path, so a runner installed from one
    checkout and started in another runs the other's code. None when it cannot be told."""
    try:
        done = subprocess.run([python, "-c", ROOT_PROBE], env=dict(env), cwd=cwd, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    origin = done.stdout.strip()
    return Path(origin).resolve().parent.parent if done.returncode == 0 and origin else None


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def code_revision(root: Path | None) -> str | None:
    """``<commit>`` or ``<commit>+dirty`` of the git tree whose top is ``root`` (``code_root``); None when ``root``
    is unknown or not the top of a git tree (an installed wheel, a virtual environment inside a repository), or
    git cannot tell."""
    if root is None:
        return None
    head = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = head.split() if head is not None else []
    if len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
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
            code = record.get("code")
            counts[code if isinstance(code, str) else NOT_RECORDED] += 1
    return dict(counts.most_common())


def short(revision: str) -> str:
    """A revision as tables show it: the commit's first 12 characters, keeping the dirty mark."""
    if revision == NOT_RECORDED:
        return revision
    commit, dirty, _ = revision.partition(DIRTY)
    return commit[:12] + dirty


def mixed_note(counts: Mapping[str, int]) -> str | None:
    """The Table 1 note when the stored cells do not all come from one clean, recorded revision; None when they do."""
    if len(counts) <= 1 and not any(DIRTY in revision or revision == NOT_RECORDED for revision in counts):
        return None
    listed = ", ".join(f"{short(revision)} ({cells})" for revision, cells in counts.items())
    return (f"the stored cells come from {len(counts)} code revision(s): {listed}; a cell's key holds its "
            "configuration, not its code (cost.md)")


def revision_markdown(counts: Mapping[str, int]) -> str:
    """The stored cells per code revision, as the Markdown table cost.md ends with; empty when none is stored."""
    if not counts:
        return ""
    lines = ["", "code revision | cells", "--- | ---"]
    lines += [f"{short(revision)} | {cells}" for revision, cells in counts.items()]
    return "\n".join(lines) + "\n"
