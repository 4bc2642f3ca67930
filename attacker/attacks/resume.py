"""Resumable GAN attacks: the run's state on disk every few minutes, continued by the next identical run.

Why: on two CPU cores one column of the GAN attack on digits takes 30-45 minutes and one on MNIST-5k hours;
an interrupted audit or experiment cell (a stopped runner, a reboot, a session's end) used to start over. With the
attacker's disk cache on (``attacker.attacks.disk_cache``: ``CEM_CACHE_DIR``), ``run_attack("gan", ...)`` keeps,
in its ``attack-runs/`` folder:

* the generator's decoder pre-training, once trained (``decoder-pretrain`` entries: the network and its history);
* the GAN's whole training state (``gan`` entries: generator, critic, both Adam states, both random generators,
  the global step, the best checkpoint so far and the history), written every ``SAVE_INTERVAL_S`` and after the
  last epoch.

Each entry is keyed by a SHA-256 of everything that decides it: the attacker's fit and validation images and
features, the obfuscation, the attack's settings and seed, the initial generator (the GAN), the source of the
code that trains it, torch's version and the device type. A rerun with the same inputs loads the pre-trained
decoder and continues the GAN from its last saved epoch; what it returns is what an uninterrupted run returns,
bit for bit on the same machine and thread count (the tests compare them); elsewhere it may differ in the last
bits, as two uninterrupted runs there would. A finished GAN's entry (about 12 MB at the defaults) makes a rerun
instant; the folder can be deleted at any time.

Not in a data-parallel run: each rank draws its own noise, so rank 0's state would not resume the others; there
every run starts afresh. An entry that cannot be read is logged and ignored, one that cannot be written is
logged and skipped: the cache never fails an attack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from attacker.attacks.data import AttackSplit
from attacker.attacks.disk_cache import CACHE_ENV, code_digest, default_cache_dir, hash_tensor, read_entry, write_entry
from attacker.attacks.loop import TrainedAttack
from cem.distributed import DistributedContext
from cem.obfuscation import ObfuscationConfig

logger = logging.getLogger(__name__)

RUN_FOLDER = "attack-runs"
RUN_FORMAT = "1"  # bump when an entry's layout changes; the training code is keyed by its source
SAVE_INTERVAL_S = 120.0  # at most this much training is lost to an interruption (plus the epoch under way)

Tensors = dict[str, torch.Tensor]


@lru_cache(maxsize=1)
def _training_code_digest() -> str:
    """SHA-256 of the modules whose code decides a pre-trained decoder's or a GAN's weights."""
    from attacker.attacks import decoder, evaluate, gan, loop, parallel, schedule  # gan imports this module
    from cem import obfuscation
    from cem.models import inversion

    return code_digest(decoder, gan, loop, evaluate, parallel, schedule, inversion, obfuscation)


def run_key(kind: str, split: AttackSplit, obfuscation: ObfuscationConfig, settings: Any, seed: int,
            init: torch.nn.Module | None = None) -> str:
    """SHA-256 over the entry's kind and format, the training code, torch's version, the device type, the
    settings (a dataclass), the seed, the obfuscation, the fit and validation tensors and ``init``'s weights."""
    digest = hashlib.sha256()
    header = {"kind": kind, "format": RUN_FORMAT, "code": _training_code_digest(), "torch": torch.__version__,
              "device": split.fit.features.device.type, "settings": dataclasses.asdict(settings), "seed": seed,
              "obfuscation": dataclasses.asdict(obfuscation)}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for part in (split.fit, split.val):
        hash_tensor(digest, part.images)
        hash_tensor(digest, part.features)
    if init is not None:
        for name, tensor in sorted(init.state_dict().items()):
            digest.update(name.encode())
            hash_tensor(digest, tensor)
    return digest.hexdigest()


@dataclass
class RunEntry:
    """One run's file in the cache; a loop saves when ``due`` (every ``interval_s``) and after its last epoch."""

    path: Path
    interval_s: float = field(default_factory=lambda: SAVE_INTERVAL_S)
    _last_save: float = field(default_factory=time.monotonic)

    def load(self) -> tuple[Tensors, dict[str, Any]] | None:
        """The stored tensors and state (the JSON ``state`` metadata), or None when there is no readable entry."""
        if not self.path.is_file():
            return None
        try:
            tensors, metadata = read_entry(self.path)
            if metadata.get("format") != RUN_FORMAT:
                raise ValueError(f"entry format {metadata.get('format')!r}, expected {RUN_FORMAT!r}")
            return tensors, json.loads(metadata["state"])
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            logger.warning("starting afresh: the attack's saved run %s is unreadable (%s)", self.path, exc)
            return None

    def due(self) -> bool:
        """Whether ``interval_s`` has passed since the last write (or since this object was made)."""
        return time.monotonic() - self._last_save >= self.interval_s

    def save(self, tensors: Tensors, state: dict[str, Any]) -> None:
        """Write the entry now; a write that fails is logged and skipped."""
        try:
            write_entry(self.path, tensors, {"format": RUN_FORMAT, "state": json.dumps(state)})
        except OSError as exc:
            logger.warning("could not save the attack's run in %s (%s); set %s to another folder, or to an empty "
                           "value to turn the cache off", self.path.parent, exc, CACHE_ENV)
        self._last_save = time.monotonic()


def run_entry(kind: str, split: AttackSplit, obfuscation: ObfuscationConfig, settings: Any, seed: int, *,
              init: torch.nn.Module | None = None, distributed: DistributedContext,
              cache_dir: Path | None = None) -> RunEntry | None:
    """The cache entry of this run, or None when runs are not kept: no cache folder (``cache_dir``, default
    ``default_cache_dir()``) or a data-parallel run (module docstring)."""
    root = cache_dir if cache_dir is not None else default_cache_dir()
    if root is None or distributed.enabled:
        return None
    key = run_key(kind, split, obfuscation, settings, seed, init)
    return RunEntry(root / RUN_FOLDER / f"{kind}-{key}.safetensors")


def module_tensors(prefix: str, module: torch.nn.Module) -> Tensors:
    return {f"{prefix}.{name}": tensor for name, tensor in module.state_dict().items()}


def tensors_under(prefix: str, tensors: Tensors) -> Tensors:
    """The entries of ``tensors`` named ``prefix.<name>``, keyed by ``<name>``."""
    start = len(prefix) + 1
    return {name[start:]: tensor for name, tensor in tensors.items() if name.startswith(f"{prefix}.")}


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[Tensors, dict[str, Any]]:
    """``optimizer``'s state dict split into its per-parameter tensors (``prefix.<index>.<name>``) and the rest
    (JSON: the parameter groups and any per-parameter value that is not a tensor)."""
    state = optimizer.state_dict()
    tensors: Tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: Tensors, rest: dict[str, Any]) -> None:
    """Restore what ``optimizer_tensors`` split (the groups' tuples, such as Adam's betas, came back as lists)."""
    per_param: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors_under(prefix, tensors).items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    for index, values in rest["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in rest["param_groups"]]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def load_trained(entry: RunEntry, network: torch.nn.Module) -> TrainedAttack | None:
    """The finished run ``save_trained`` stored in ``entry``, its weights loaded into ``network`` (eval mode), or
    None when there is none (or it does not fit ``network``, logged)."""
    loaded = entry.load()
    if loaded is None:
        return None
    tensors, state = loaded
    try:
        network.load_state_dict(tensors_under("network", tensors))
    except RuntimeError as exc:
        logger.warning("starting afresh: the attack's saved run %s does not fit its network (%s)", entry.path, exc)
        return None
    network.eval()
    return TrainedAttack(network, history=state["history"], best_epoch=int(state["best_epoch"]))


def save_trained(entry: RunEntry, trained: TrainedAttack) -> None:
    """Store a finished run's (selected) network, history and best epoch."""
    entry.save(module_tensors("network", trained.network),
               {"history": trained.history, "best_epoch": trained.best_epoch})
