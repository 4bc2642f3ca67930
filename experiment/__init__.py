"""``cem-experiment``: the paper's Table 1, Fig. 3 and Fig. 4 as a reproducible, resumable grid.

A TOML spec (``experiment.spec``) names data sets, defense rows, σ and λ values,
seeds and attacks. The grid expands into cells (``experiment.cells``): a *train*
cell is one ``cem-train`` run, an *attack* cell one ``cem-attack`` run on one
trained bundle. Each cell is stored under a hash of its resolved configuration
(``experiment.store``), so a rerun does only what is missing or changed. The
runner (``experiment.runner``) starts the real CLIs as subprocesses: this package
imports only the kernel (``cem``), never ``training`` or ``attacker``. The report
(``experiment.report``, ``experiment.plots``, ``experiment.html``) reads the stored
cells only.
"""

from experiment.cells import AttackCell, Plan, TrainCell
from experiment.spec import AttackSpec, ExperimentSpec, RowSpec, load_spec, parse_spec

__all__ = [
    "AttackCell",
    "AttackSpec",
    "ExperimentSpec",
    "Plan",
    "RowSpec",
    "TrainCell",
    "load_spec",
    "parse_spec",
]
