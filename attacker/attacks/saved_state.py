"""Checks of a saved attack run against the run that found it, before anything of it is loaded.

A resumed run must return what the uninterrupted run returns (``attacker.attacks.resume``), so an entry is used
only when everything in it is what that run could have saved: every tensor's name, shape and dtype; Adam's state
with the very settings of the optimizer it is loaded into and steps that match the global step; a history whose
rows are finite numbers, one per epoch, with validation MSEs exactly where the run has validation images; and a
best checkpoint that is the one those MSEs select. Anything else raises ``EntryMismatch`` and the run starts
afresh. Finite values are checked where the entry is read (``RunEntry.load``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

Tensors = dict[str, torch.Tensor]
ADAM_STATE_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq"})  # per parameter, without amsgrad


class EntryMismatch(ValueError):
    """A saved run that reads but does not fit the run that found it (shapes, keys, values out of range)."""


def tensors_under(prefix: str, tensors: Mapping[str, torch.Tensor]) -> Tensors:
    """The entries of ``tensors`` named ``prefix.<name>``, keyed by ``<name>``."""
    start = len(prefix) + 1
    return {name[start:]: tensor for name, tensor in tensors.items() if name.startswith(f"{prefix}.")}


def check_like(what: str, saved: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor]) -> None:
    """``EntryMismatch`` unless ``saved`` has exactly ``current``'s names, shapes and dtypes."""
    if saved.keys() != current.keys():
        raise EntryMismatch(f"{what}: {len(saved)} saved tensors do not match the {len(current)} expected")
    for name, tensor in current.items():
        if saved[name].shape != tensor.shape or saved[name].dtype != tensor.dtype:
            raise EntryMismatch(f"{what}.{name}: saved {tuple(saved[name].shape)} {saved[name].dtype}, expected "
                                f"{tuple(tensor.shape)} {tensor.dtype}")


def check_int(what: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EntryMismatch(f"{what}: expected an integer in [{low}, {high}], got {str(value)[:80]}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_history(value: Any, epochs: int, *, has_val: bool) -> list[dict[str, Any]]:
    """``value`` if it is ``epochs`` rows, row i of epoch i + 1, every value a finite number (or None), the
    validation MSE a number >= 0 exactly when the run has validation images."""
    if not isinstance(value, list) or len(value) != epochs:
        raise EntryMismatch(f"history: expected {epochs} rows, got {str(value)[:80]}")
    for i, row in enumerate(value, start=1):
        if not isinstance(row, dict) or row.get("epoch") != i or "val_mse" not in row \
                or not all(v is None or _is_number(v) for v in row.values()):
            raise EntryMismatch(f"history: row {i} is not an epoch's numbers: {str(row)[:80]}")
        val = row["val_mse"]
        if (val is None) == has_val or (val is not None and val < 0):
            raise EntryMismatch(f"history: row {i} has validation MSE {val!r} on a run "
                                f"{'with' if has_val else 'without'} validation images")
    return value


def check_best(history: Sequence[Mapping[str, Any]], best_epoch: Any, best_mse: Any,
               initial: float | None = None) -> tuple[int, float]:
    """(best epoch, its MSE) if they are the ones ``CheckpointKeeper`` keeps for ``history``: the lowest
    validation MSE, the later epoch on a tie, ``initial`` the MSE offered as epoch 0 (a GAN started from a
    decoder) or None; without validation MSEs, the last epoch and infinity."""
    curve = ([(0, initial)] if initial is not None else []) + [(row["epoch"], row["val_mse"]) for row in history]
    if history and history[0]["val_mse"] is None:
        expected = (len(history), math.inf)
    elif curve:
        low = min(mse for _, mse in curve)
        expected = (max(epoch for epoch, mse in curve if mse == low), low)
    else:
        expected = (0, math.inf)
    if (best_epoch, best_mse) != expected or isinstance(best_epoch, bool):
        raise EntryMismatch(f"best checkpoint: saved epoch {best_epoch!r} at {best_mse!r}, its history selects "
                            f"epoch {expected[0]} at {expected[1]!r}")
    return expected


def adam_state(optimizer: torch.optim.Optimizer, prefix: str, tensors: Mapping[str, torch.Tensor], rest: Any,
               step: int) -> dict[str, Any]:
    """The state dict ``resume.optimizer_tensors`` split off an Adam optimizer (no amsgrad), put back together
    for ``optimizer.load_state_dict``: ``EntryMismatch`` unless its groups are ``optimizer``'s (the same
    parameters and settings; the learning rate is the schedule's, which the caller sets) and, if ``step`` > 0,
    every parameter has Adam's state for its shape at that step (none at step 0)."""
    if not isinstance(rest, dict) or not isinstance(rest.get("param_groups"), list) \
            or not isinstance(rest.get("scalars"), dict):
        raise EntryMismatch(f"{prefix}: expected param_groups and scalars, got {str(rest)[:80]}")
    current = optimizer.state_dict()["param_groups"]
    groups = [{k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in g.items()}
              if isinstance(g, dict) else g for g in rest["param_groups"]]
    if len(groups) != len(current) or any(not isinstance(g, dict) or g.keys() != c.keys()
                                          or any(g[k] != c[k] for k in c if k != "lr")
                                          for g, c in zip(groups, current, strict=False)):
        raise EntryMismatch(f"{prefix}: its parameter groups are not the optimizer's")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors_under(prefix, tensors).items():
        index_text, _, key = name.partition(".")
        per_param.setdefault(_param_index(prefix, index_text, len(params)), {})[key] = tensor
    for index_text, values in rest["scalars"].items():
        if not isinstance(values, dict):
            raise EntryMismatch(f"{prefix}: the values of parameter {index_text!r} are not an object")
        per_param.setdefault(_param_index(prefix, index_text, len(params)), {}).update(values)
    if len(per_param) != (len(params) if step else 0):
        raise EntryMismatch(f"{prefix}: {len(per_param)} parameters have a state at step {step}, expected "
                            f"{len(params) if step else 0}")
    for index, values in per_param.items():
        param = params[index]
        moments = [values.get(k) for k in ("exp_avg", "exp_avg_sq")]
        if values.keys() != ADAM_STATE_KEYS or not all(
                isinstance(m, torch.Tensor) and m.shape == param.shape and m.dtype == param.dtype for m in moments):
            raise EntryMismatch(f"{prefix}: the state of parameter {index} is not Adam's for its shape")
        if bool((values["exp_avg_sq"] < 0).any()):
            raise EntryMismatch(f"{prefix}: parameter {index} has a negative second moment")
        saved_step = values["step"]
        if isinstance(saved_step, torch.Tensor):
            exact = saved_step.dim() == 0 and saved_step.dtype == torch.float32 and float(saved_step) == step
        else:
            exact = _is_number(saved_step) and saved_step == step
        if not exact:
            raise EntryMismatch(f"{prefix}: parameter {index} is at step {str(saved_step)[:40]}, expected {step}")
    return {"state": per_param, "param_groups": groups}


def _param_index(prefix: str, text: str, count: int) -> int:
    if not text.isdigit() or int(text) >= count:
        raise EntryMismatch(f"{prefix}: no parameter {text[:40]!r} among its {count}")
    return int(text)


def check_random_state(what: str, state: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """``state`` if ``generator`` (of its device) accepts it, tried on a throwaway generator."""
    if state is None or state.dtype != torch.uint8 or state.shape != generator.get_state().shape:
        raise EntryMismatch(f"{what}: not a state of this random generator")
    try:
        torch.Generator(device=generator.device).set_state(state)
    except RuntimeError as exc:
        raise EntryMismatch(f"{what}: {exc}") from exc
    return state
