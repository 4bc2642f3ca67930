"""``--nproc N``: re-launch the same command as N data-parallel processes through torchrun.

``cem-train --nproc 2 ARGS`` is ``torchrun --standalone --nproc-per-node 2 -m training.cli ARGS``,
``cem-attack --nproc 2 ARGS`` the same with ``-m attacker.cli`` (each CLI names its own
worker module). ``--nproc 2`` stays in ARGS; the workers see it equal WORLD_SIZE and run.
``--standalone`` runs a single-node rendezvous on a free local port, so two runs on one
machine never collide. This process only waits: the workers load the data, run and write
(rank 0), and its exit status is the first failed worker's (2 for a configuration error,
as ``cem.cli`` says). For several machines, call torchrun directly with its rendezvous flags.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import torch

from cem.distributed import launch_env_world_size
from cem.errors import ConfigError


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


def check_devices(nproc: int, device: torch.device) -> None:
    """Refuse more CUDA processes than GPUs: each rank takes ``cuda:LOCAL_RANK`` and NCCL refuses two ranks on one."""
    if device.type != "cuda" or nproc <= 1:
        return
    count = torch.cuda.device_count()
    if nproc > count:
        raise ConfigError(f"expected --nproc at most the {count} visible GPU(s) on CUDA (one GPU per process), "
                          f"got {nproc}; use --device cpu or fewer processes")


def needs_relaunch(nproc: int) -> bool:
    """True for ``--nproc N > 1`` outside a launcher: this process must start the workers."""
    return nproc > 1 and not inside_launcher()


def torchrun_args(nproc: int, module: str) -> list[str]:
    """torchrun's own arguments for ``nproc`` local workers running ``python -m module`` (its arguments come apart)."""
    return ["--standalone", f"--nproc-per-node={nproc}", "--module", module]


def relaunch(nproc: int, argv: list[str], module: str) -> int:
    """Run ``nproc`` workers of ``module`` with ``argv`` and wait -> 0, or the first failed worker's exit status
    (1 for a signal)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launch_args = torchrun.parse_args(torchrun_args(nproc, module))
    # Set after parsing: torchrun's parser would read worker flags such as --nproc as abbreviations of its own.
    launch_args.training_script_args = list(argv)
    try:
        torchrun.run(launch_args)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def run_or_relaunch(nproc: int, argv: list[str] | None, *, run: Callable[[], int],
                    launch: Callable[[list[str]], int]) -> int:
    """The body of a data-parallel CLI: check ``--nproc``, then start the workers with this command's arguments
    (``argv``, else ``sys.argv[1:]``) when ``needs_relaunch``, else ``run`` this process's part."""
    check_nproc(nproc)
    if needs_relaunch(nproc):
        return launch(list(sys.argv[1:] if argv is None else argv))
    return run()


def exit_command(code: int) -> NoReturn:
    """End a data-parallel CLI's process with ``code`` (its console script and ``python -m`` both end here):
    ``exit_without_teardown`` in a torchrun worker, ``sys.exit`` outside a launcher."""
    if inside_launcher():
        exit_without_teardown(code)
    sys.exit(code)


def exit_without_teardown(code: int) -> NoReturn:
    """Flush the log handlers and standard streams, then leave through ``os._exit``, skipping the interpreter's
    teardown. With gloo that teardown has aborted finished ranks ("terminate called without an active exception",
    C++ std::terminate in torch's exit path, after ``destroy_process_group``): twice in about 80 two-rank test
    runs, and once in CI on ``cem-attack --nproc 2`` after rank 0 had written its results, turning a complete run
    into exit code -6 and a failed launch. Call it only once everything the process writes is closed."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
