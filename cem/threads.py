"""How many intra-op threads torch uses in every command: one rule, stated once.

In order: the command's ``--threads N``; else ``OMP_NUM_THREADS`` when set (the
convention OpenMP, MKL and torch itself follow); else every CPU this process may
run on (its affinity mask, which honours ``taskset`` and container cpusets, unlike
``os.cpu_count()``). The last is right for a service or a training run that has
its machine to itself. Where several processes share one machine (an edge
client next to its cloud in a benchmark, the test suite), give each a budget
that does not overlap the others': two busy processes with one OpenMP team per
core each spin against one another and both slow down.
"""

from __future__ import annotations

import os

import torch

from cem.errors import ConfigError

THREADS_ENV = "OMP_NUM_THREADS"


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_threads(requested: int | None) -> int:
    """The thread count the rule above gives; ConfigError for a count below 1 or an unusable environment value."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"expected --threads >= 1, got {requested}")
        return requested
    from_env = os.environ.get(THREADS_ENV, "").strip()
    if from_env:
        try:
            threads = int(from_env.split(",")[0])  # OpenMP allows a per-level list; the first level is ours
        except ValueError:
            raise ConfigError(f"expected {THREADS_ENV} to be a positive integer, got {from_env!r}") from None
        if threads < 1:
            raise ConfigError(f"expected {THREADS_ENV} >= 1, got {from_env!r}")
        return threads
    return available_cpus()


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads by the rule above; returns the count."""
    threads = resolve_threads(requested)
    torch.set_num_threads(threads)
    return threads


THREADS_HELP = f"torch intra-op threads (default: ${THREADS_ENV} when set, else every CPU this process may use)"
