"""``cem-train --nproc N``: re-launch the same command as N data-parallel processes through torchrun.

``cem-train --nproc 2 ARGS`` is ``torchrun --standalone --nproc-per-node 2 -m training.cli ARGS``
(``--nproc 2`` stays in ARGS; the workers see it equal WORLD_SIZE and train). ``--standalone``
runs a single-node rendezvous on a free local port, so two runs on one machine never collide.
This process only waits: the workers load the data, train and write (rank 0), and its exit
status is the first failed worker's (2 for a configuration error, as ``cem.cli`` says).
For several machines, call torchrun directly with its rendezvous flags.
"""

from __future__ import annotations

import os

from cem.errors import ConfigError
from training.distributed import launch_env_world_size

WORKER_MODULE = "training.cli"


def inside_launcher() -> bool:
    """Whether a launcher (torchrun) started this process: it sets LOCAL_RANK and WORLD_SIZE."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_nproc(nproc: int) -> None:
    """Refuse ``--nproc`` below 1, or one that disagrees with the launcher that started this process."""
    if nproc < 1:
        raise ConfigError(f"expected --nproc >= 1, got {nproc}")
    if inside_launcher() and nproc > 1 and nproc != launch_env_world_size():
        raise ConfigError(f"expected --nproc equal to the launcher's WORLD_SIZE={launch_env_world_size()} "
                          f"(or left out under torchrun), got {nproc}")


def needs_relaunch(nproc: int) -> bool:
    """True for ``--nproc N > 1`` outside a launcher: this process must start the workers."""
    return nproc > 1 and not inside_launcher()


def torchrun_args(nproc: int) -> list[str]:
    """torchrun's own arguments for ``nproc`` local workers of ``WORKER_MODULE`` (its arguments come apart)."""
    return ["--standalone", f"--nproc-per-node={nproc}", "--module", WORKER_MODULE]


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run the workers and wait -> 0, or the first failed worker's exit status (1 for a signal)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launch_args = torchrun.parse_args(torchrun_args(nproc))
    # Set after parsing: torchrun's parser would read worker flags such as --nproc as abbreviations of its own.
    launch_args.training_script_args = list(argv)
    try:
        torchrun.run(launch_args)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
