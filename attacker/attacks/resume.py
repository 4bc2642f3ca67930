"""Resumable GAN attacks: the run's state on disk every few minutes, continued by the next identical run.

Why: on two CPU cores one column of the GAN attack on digits takes 30-45 minutes and one on MNIST-5k hours;
an interrupted audit or experiment cell (a stopped runner, a reboot, a session's end) used to start over. With the
attacker's disk cache on (``attacker.attacks.disk_cache``: ``CEM_CACHE_DIR``), ``run_attack("gan", ...)`` keeps,
in its ``attack-runs/`` folder:

* the generator's decoder pre-training, once trained (``decoder-pretrain`` entries: the network and its history);
* the GAN's whole training state (``gan`` entries: generator, critic, both Adam states, both random generators,
  the global step, the best checkpoint so far and the history) every ``SAVE_INTERVAL_S``: 12.9 MB on digits'
  settings, about 24 MB with the paper's 64-channel generator; once the run has finished, only the selected
  generator, its history and best epoch.

Each entry is keyed by a SHA-256 of everything that decides it: the attacker's fit and validation images and
features, the obfuscation, the attack's settings and seed, the initial generator (the GAN), the source of the
code that trains it, torch's version and the device type. A rerun with the same inputs loads the pre-trained
decoder and continues the GAN from its last saved epoch (or returns the finished run); on the CPU what it
returns is what an uninterrupted run returns, bit for bit on the same machine and thread count (the tests
compare them); elsewhere, and on CUDA, whose convolution backward is not deterministic, it may differ in the
last bits, as two uninterrupted runs there do. The folder can be deleted at any time; a run that must be
recomputed rather than reused (a reproducibility check) sets ``CEM_CACHE_DIR=`` (empty).

An entry that cannot be read, or that does not fit the run that finds it (``attacker.attacks.saved_state`` checks
everything before anything is loaded), is logged and ignored: the run starts afresh from its true initial state
and its next save replaces the entry. One that cannot be written is logged and skipped: the cache never fails an
attack. Two processes running the same attack at once both train it; a save does not replace an entry that holds
more epochs (checked just before the write, not atomically with it). Not in a data-parallel run: each rank draws
its own noise, so rank 0's state would not resume the others; there every run starts afresh, as it does for
``run_attack(..., resumable=False)`` (a benchmark that times the attack).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from attacker.attacks.data import AttackSplit
from attacker.attacks.disk_cache import CACHE_ENV, code_digest, default_cache_dir, hash_tensor, read_entry, write_entry
from attacker.attacks.loop import TrainedAttack
from attacker.attacks.saved_state import EntryMismatch, Tensors, check_best, check_history, check_like, tensors_under
from cem.distributed import DistributedContext
from cem.obfuscation import ObfuscationConfig

logger = logging.getLogger(__name__)

RUN_FOLDER = "attack-runs"
GAN_KIND, PRETRAIN_KIND = "gan", "decoder-pretrain"
FINISHED = 1 << 30  # an entry's progress once its run has finished: more than any epoch count
RUN_FORMAT = "1"  # bump when an entry's layout changes; the training code is keyed by its source
SAVE_INTERVAL_S = 120.0  # at most this much training is lost to an interruption (plus the epoch under way)



@cache
def _training_code_digest(kind: str) -> str:
    """SHA-256 of the modules whose code decides an entry of ``kind``'s weights. A GAN's does not hash the decoder's
    training loop, whose product its key holds as the initial weights; neither hashes this module (a change of
    an entry's layout bumps ``RUN_FORMAT``, and ``saved_state`` refuses an entry that does not fit), so editing
    it does not throw away hours of saved runs."""
    from attacker.attacks import decoder, evaluate, gan, loop, parallel, schedule  # gan imports this module
    from cem import obfuscation
    from cem.models import inversion

    trainer = (gan,) if kind == GAN_KIND else (decoder, schedule)
    return code_digest(*trainer, loop, evaluate, parallel, inversion, obfuscation)


def run_key(kind: str, split: AttackSplit, obfuscation: ObfuscationConfig, settings: Any, seed: int,
            init: torch.nn.Module | None = None) -> str:
    """SHA-256 over the entry's kind and format, the training code, torch's version, the device type, the
    settings (a dataclass), the seed, the obfuscation, the fit and validation tensors and ``init``'s weights."""
    digest = hashlib.sha256()
    header = {"kind": kind, "format": RUN_FORMAT, "code": _training_code_digest(kind), "torch": torch.__version__,
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
    """One run's file in the cache; a loop saves when ``due`` (every ``interval_s``) and when it has finished.

    ``progress`` (the epochs an entry holds; ``FINISHED`` for a finished run) orders the saves of two processes
    running the same attack at once: a write never replaces an entry that holds more."""

    path: Path
    interval_s: float = field(default_factory=lambda: SAVE_INTERVAL_S)
    _last_save: float = field(default_factory=time.monotonic)
    _rejected: bool = False  # the stored entry was not used: the next save replaces it, whatever it holds

    def load(self) -> tuple[Tensors, dict[str, Any]] | None:
        """The stored tensors and state (the JSON ``state`` metadata, a dict), or None when there is no readable
        entry (logged)."""
        if not self.path.is_file():
            return None
        try:
            tensors, metadata = read_entry(self.path)
            if metadata.get("format") != RUN_FORMAT:
                raise ValueError(f"entry format {metadata.get('format')!r}, expected {RUN_FORMAT!r}")
            state = json.loads(metadata["state"], parse_constant=_infinity_only)
            if not isinstance(state, dict):
                raise ValueError(f"expected a JSON object as its state, got {type(state).__name__}")
        except (OSError, ValueError, KeyError, SafetensorError, RecursionError, MemoryError) as exc:
            self.ignore(f"it is unreadable ({str(exc)[:200]})")
            return None
        unfinite = [name for name, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]
        if unfinite:
            self.ignore(f"{unfinite[0]} holds values that are not finite")
            return None
        return tensors, state

    def ignore(self, why: str) -> None:
        """Log why the stored entry is not used; the next save replaces it."""
        self._rejected = True
        logger.warning("starting afresh: the attack's saved run %s is not used: %s", self.path, why)

    def due(self) -> bool:
        """Whether ``interval_s`` has passed since the last write (or since this object was made)."""
        return time.monotonic() - self._last_save >= self.interval_s

    def _stored_progress(self) -> int:
        try:
            with safe_open(str(self.path), framework="pt") as file:
                return int((file.metadata() or {}).get("progress", -1))
        except (OSError, ValueError, SafetensorError):
            return -1


    def save(self, tensors: Tensors, state: dict[str, Any], progress: int) -> None:
        """Write the entry now, unless the stored one (not rejected by ``ignore``) holds at least ``progress``; a
        write that fails is logged and skipped."""
        self._last_save = time.monotonic()
        if not self._rejected and self.path.is_file() and self._stored_progress() >= progress:
            return
        try:
            write_entry(self.path, tensors,
                        {"format": RUN_FORMAT, "progress": str(progress), "state": json.dumps(state)})
            self._rejected = False
        except (OSError, TypeError, ValueError, RuntimeError) as exc:
            logger.warning("could not save the attack's run in %s (%s); set %s to another folder, or to an empty "
                           "value to turn the cache off", self.path.parent, exc, CACHE_ENV)


def _infinity_only(constant: str) -> float:
    """JSON's non-standard constants: ``Infinity`` (a run without validation images has no best MSE) only."""
    if constant != "Infinity":
        raise ValueError(f"{constant} in a saved run")
    return math.inf


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


def trained_from(tensors: Tensors, state: dict[str, Any], network: torch.nn.Module, *, epochs: int,
                 has_val: bool, initial: float | None = None) -> TrainedAttack:
    """A finished run of ``epochs`` epochs (``save_trained``'s form) with its weights loaded into ``network`` (eval
    mode); ``EntryMismatch`` when it is not what such a run on data with(out) validation images (``has_val``)
    saves, ``initial`` the MSE it offered as epoch 0 (``saved_state.check_best``); nothing is loaded then."""
    saved = tensors_under("network", tensors)
    check_like("network", saved, network.state_dict())
    history = check_history(state.get("history"), epochs, has_val=has_val)
    best_epoch, _ = check_best(history, state.get("best_epoch"), state.get("best_mse"), initial)
    network.load_state_dict(saved)
    network.eval()
    return TrainedAttack(network, history=history, best_epoch=best_epoch)


def load_trained(entry: RunEntry, network: torch.nn.Module, *, epochs: int, has_val: bool) -> TrainedAttack | None:
    """The finished run ``save_trained`` stored in ``entry``, its weights loaded into ``network``, or None when
    there is none or it does not fit (logged; ``trained_from``)."""
    loaded = entry.load()
    if loaded is None:
        return None
    tensors, state = loaded
    if not state.get("finished"):
        entry.ignore("it holds no finished run")
        return None
    try:
        return trained_from(tensors, state, network, epochs=epochs, has_val=has_val)
    except EntryMismatch as exc:
        entry.ignore(str(exc))
        return None


def save_trained(entry: RunEntry, trained: TrainedAttack, best_mse: float | None) -> None:
    """Store a finished run: its selected network, history, best epoch and that epoch's validation MSE (None:
    none; no optimizer or critic state: nothing is left to train)."""
    entry.save(module_tensors("network", trained.network),
               {"finished": True, "history": trained.history, "best_epoch": trained.best_epoch,
                "best_mse": math.inf if best_mse is None else best_mse}, FINISHED)
