"""How many intra-op threads torch uses in every command: one rule, stated once.

In order: the command's ``--threads N``; else ``OMP_NUM_THREADS`` when set (the
convention OpenMP, MKL and torch itself follow); else the CPUs this process may
run on (its affinity mask, which honours ``taskset`` and container cpusets, unlike
``os.cpu_count()``) that other work is not already using: the mask's size minus
the one-minute load average, rounded, and at least one. On an idle machine that
is every core; on a busy one it leaves the busy cores alone, because an OpenMP
team spread over cores that other processes occupy waits at every barrier for
its descheduled members: on the shared 2-core development box (load 3-7) the
default digits training took 8 min 08 s with 2 threads and 20-22 s with 1.
Where several processes of one job share a machine (an edge client next to its
cloud, the demo, the test suite), give each a budget that does not overlap the
others'.
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


def idle_cpus(load: float | None = None) -> int:
    """CPUs of the affinity mask not taken by other work: its size minus the 1-minute load average (or ``load``)."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this system: assume an idle machine
            load = 0.0
    return max(1, available_cpus() - round(load))


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
    return idle_cpus()


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads by the rule above; returns the count."""
    threads = resolve_threads(requested)
    torch.set_num_threads(threads)
    return threads


THREADS_HELP = (f"torch intra-op threads (default: ${THREADS_ENV} when set, else the CPUs this process may use "
                "minus the 1-minute load average: every core of an idle machine)")
