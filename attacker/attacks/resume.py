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

An entry that cannot be read, or that does not fit the run that finds it (every tensor's name, shape and dtype,
the optimizer's state and every number are checked before anything is loaded), is logged and ignored: the run
starts afresh from its true initial state. One that cannot be written is logged and skipped: the cache never
fails an attack. Two processes running the same attack at once both train it; neither write replaces an entry
that holds more epochs. Not in a data-parallel run: each rank draws its own noise, so rank 0's state would not
resume the others; there every run starts afresh, as it does for ``run_attack(..., resumable=False)`` (a
benchmark that times the attack).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
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
from cem.distributed import DistributedContext
from cem.obfuscation import ObfuscationConfig

logger = logging.getLogger(__name__)

RUN_FOLDER = "attack-runs"
GAN_KIND, PRETRAIN_KIND = "gan", "decoder-pretrain"
FINISHED = 1 << 30  # an entry's progress once its run has finished: more than any epoch count
RUN_FORMAT = "1"  # bump when an entry's layout changes; the training code is keyed by its source
SAVE_INTERVAL_S = 120.0  # at most this much training is lost to an interruption (plus the epoch under way)

Tensors = dict[str, torch.Tensor]


@cache
def _training_code_digest(kind: str) -> str:
    """SHA-256 of the modules whose code decides an entry of ``kind`` (this module's layout included): a GAN's
    does not hash the decoder's training loop, whose product the GAN key holds as its initial weights."""
    from attacker.attacks import decoder, evaluate, gan, loop, parallel, schedule  # gan imports this module
    from cem import obfuscation
    from cem.models import inversion

    trainer = (gan,) if kind == GAN_KIND else (decoder, schedule)
    return code_digest(sys.modules[__name__], *trainer, loop, evaluate, parallel, inversion, obfuscation)


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


class EntryMismatch(ValueError):
    """A saved run that reads but does not fit the run that found it (shapes, keys, values out of range)."""


@dataclass
class RunEntry:
    """One run's file in the cache; a loop saves when ``due`` (every ``interval_s``) and when it has finished.

    ``progress`` (the epochs an entry holds; ``FINISHED`` for a finished run) orders the saves of two processes
    running the same attack at once: a write never replaces an entry that holds more."""

    path: Path
    interval_s: float = field(default_factory=lambda: SAVE_INTERVAL_S)
    _last_save: float = field(default_factory=time.monotonic)

    def load(self) -> tuple[Tensors, dict[str, Any]] | None:
        """The stored tensors and state (the JSON ``state`` metadata, a dict), or None when there is no readable
        entry (logged)."""
        if not self.path.is_file():
            return None
        try:
            tensors, metadata = read_entry(self.path)
            if metadata.get("format") != RUN_FORMAT:
                raise ValueError(f"entry format {metadata.get('format')!r}, expected {RUN_FORMAT!r}")
            state = json.loads(metadata["state"])
            if not isinstance(state, dict):
                raise ValueError(f"expected a JSON object as its state, got {type(state).__name__}")
            return tensors, state
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            self.ignore(f"it is unreadable ({exc})")
            return None

    def ignore(self, why: str) -> None:
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
        """Write the entry now, unless the stored one holds at least ``progress``; a write that fails is logged
        and skipped."""
        self._last_save = time.monotonic()
        if self.path.is_file() and self._stored_progress() >= progress:
            return
        try:
            write_entry(self.path, tensors,
                        {"format": RUN_FORMAT, "progress": str(progress), "state": json.dumps(state)})
        except (OSError, TypeError, ValueError, RuntimeError) as exc:
            logger.warning("could not save the attack's run in %s (%s); set %s to another folder, or to an empty "
                           "value to turn the cache off", self.path.parent, exc, CACHE_ENV)


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


def check_like(what: str, saved: Tensors, current: dict[str, torch.Tensor]) -> None:
    """``EntryMismatch`` unless ``saved`` has exactly ``current``'s names, shapes and dtypes."""
    if saved.keys() != current.keys():
        raise EntryMismatch(f"{what}: {len(saved)} saved tensors do not match the {len(current)} expected")
    for name, tensor in current.items():
        if saved[name].shape != tensor.shape or saved[name].dtype != tensor.dtype:
            raise EntryMismatch(f"{what}.{name}: saved {tuple(saved[name].shape)} {saved[name].dtype}, expected "
                                f"{tuple(tensor.shape)} {tensor.dtype}")


def check_int(what: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EntryMismatch(f"{what}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def check_history(value: Any, epochs: int) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) != epochs or not all(isinstance(row, dict) for row in value):
        raise EntryMismatch(f"history: expected {epochs} rows, got {str(value)[:80]}")
    return value


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


ADAM_STATE_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq"})  # per parameter, without amsgrad


def adam_state(optimizer: torch.optim.Optimizer, prefix: str, tensors: Tensors, rest: Any) -> dict[str, Any]:
    """The state dict ``optimizer_tensors`` split off an Adam optimizer (no amsgrad), put back together (the groups'
    tuples, such as the betas, came back as lists) and checked against ``optimizer``: ``EntryMismatch`` unless
    the groups name the same parameters and every parameter has no state or exactly Adam's (a step, and moments
    of its shape and dtype)."""
    if not isinstance(rest, dict) or not isinstance(rest.get("param_groups"), list) \
            or not isinstance(rest.get("scalars"), dict):
        raise EntryMismatch(f"{prefix}: expected param_groups and scalars, got {str(rest)[:80]}")
    current = optimizer.state_dict()["param_groups"]
    groups = rest["param_groups"]
    if len(groups) != len(current) or any(not isinstance(g, dict) or g.keys() != c.keys()
                                          or g["params"] != c["params"] for g, c in zip(groups, current, strict=False)):
        raise EntryMismatch(f"{prefix}: its parameter groups do not match the optimizer's")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors_under(prefix, tensors).items():
        index_text, _, key = name.partition(".")
        per_param.setdefault(_param_index(prefix, index_text, len(params)), {})[key] = tensor
    for index_text, values in rest["scalars"].items():
        if not isinstance(values, dict) or not all(isinstance(v, (int, float)) for v in values.values()):
            raise EntryMismatch(f"{prefix}: the values of parameter {index_text!r} are not numbers")
        per_param.setdefault(_param_index(prefix, index_text, len(params)), {}).update(values)
    for index, values in per_param.items():
        param = params[index]
        moments = [values.get(k) for k in ("exp_avg", "exp_avg_sq")]
        if values.keys() != ADAM_STATE_KEYS or not all(
                isinstance(m, torch.Tensor) and m.shape == param.shape and m.dtype == param.dtype for m in moments):
            raise EntryMismatch(f"{prefix}: the state of parameter {index} is not Adam's for its shape")
        step = values["step"]
        if isinstance(step, torch.Tensor) and (step.dim() or not step.dtype.is_floating_point):
            raise EntryMismatch(f"{prefix}: the step of parameter {index} is not a scalar")
    return {"state": per_param,
            "param_groups": [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]}


def _param_index(prefix: str, text: str, count: int) -> int:
    if not text.isdigit() or int(text) >= count:
        raise EntryMismatch(f"{prefix}: no parameter {text!r} among its {count}")
    return int(text)


def trained_from(tensors: Tensors, state: dict[str, Any], network: torch.nn.Module,
                 epochs: int | None = None) -> TrainedAttack:
    """A finished run (``save_trained``'s form) with its weights loaded into ``network`` (eval mode);
    ``EntryMismatch`` when it does not fit ``network`` or, given ``epochs``, has another count (nothing loaded
    then)."""
    saved = tensors_under("network", tensors)
    check_like("network", saved, network.state_dict())
    history = state.get("history")
    if epochs is None:
        epochs = len(history) if isinstance(history, list) else 0
    history = check_history(history, epochs)
    best_epoch = check_int("best_epoch", state.get("best_epoch"), 0, epochs)
    network.load_state_dict(saved)
    network.eval()
    return TrainedAttack(network, history=history, best_epoch=best_epoch)


def load_trained(entry: RunEntry, network: torch.nn.Module) -> TrainedAttack | None:
    """The finished run ``save_trained`` stored in ``entry``, its weights loaded into ``network``, or None when
    there is none or it does not fit (logged)."""
    loaded = entry.load()
    if loaded is None:
        return None
    tensors, state = loaded
    if not state.get("finished"):
        entry.ignore("it holds no finished run")
        return None
    try:
        return trained_from(tensors, state, network)
    except EntryMismatch as exc:
        entry.ignore(str(exc))
        return None


def save_trained(entry: RunEntry, trained: TrainedAttack) -> None:
    """Store a finished run: its selected network, history and best epoch (no optimizer or critic state: nothing
    is left to train)."""
    entry.save(module_tensors("network", trained.network),
               {"finished": True, "history": trained.history, "best_epoch": trained.best_epoch}, FINISHED)
