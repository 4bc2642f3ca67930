"""The attacker's disk cache: where it lives, how its keys hash inputs, how its entries are read and written.

Two caches share it: trained evaluation classifiers (``attacker.attacks.classifier_cache``) and the learned
attacks' resumable runs (``attacker.attacks.resume``). Both key an entry by a SHA-256 of everything that decides
its contents (tensor bytes, settings, the source of the code that computes it, the torch version, the device
type), so a change of any of them is a miss rather than a stale answer.

Entries are safetensors files (no pickle) with string metadata, under ``CACHE_ENV`` (``CEM_CACHE_DIR``; an empty
value turns every cache off), else ``$XDG_CACHE_HOME/cem``, else ``~/.cache/cem``; the folder can be deleted at
any time. Writes are atomic with a per-writer temporary name (``cem.durable``): concurrent writers of one entry
race and the last whole file wins; a writer killed mid-write leaves a ``.tmp-`` file that the next write in that
folder sweeps once it is an hour old.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from cem.durable import TMP_PREFIX, write_durably

logger = logging.getLogger(__name__)

CACHE_ENV = "CEM_CACHE_DIR"
STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died


def default_cache_dir() -> Path | None:
    """The cache root: ``$CEM_CACHE_DIR`` (empty: no cache), else ``$XDG_CACHE_HOME/cem``, else ``~/.cache/cem``;
    None (no cache, logged) when there is no home folder to put it in."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() if configured.strip() else None
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no HOME and no passwd entry (an arbitrary container uid)
            logger.warning("no home folder for the attacker's cache; set %s to use one", CACHE_ENV)
            return None
    return Path(base) / "cem"


def code_digest(*modules: ModuleType) -> str:
    """SHA-256 of the source files of ``modules``: editing any of them changes every key built on it."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(inspect.getfile(module)).read_bytes())
    return digest.hexdigest()


def hash_tensor(digest: Any, tensor: torch.Tensor | None) -> None:
    """Feed ``tensor``'s shape, dtype and bytes (or a marker for None) into ``digest`` (a hashlib object)."""
    if tensor is None:
        digest.update(b"none")
        return
    data = tensor.detach().to("cpu").contiguous()
    digest.update(f"{tuple(data.shape)}{data.dtype}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().data)  # the bytes (a 0-d tensor too), no other copy


def read_entry(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on the CPU) and metadata of the entry at ``path``; OSError, ValueError or a safetensors error
    when it is not a whole safetensors file."""
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open is not iterable)
    return tensors, metadata


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write an entry atomically (creating its folder), first sweeping the folder's stale temporary files.
    OSError when it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for leftover in path.parent.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):  # another writer may finish or sweep it first
            if now - leftover.stat().st_mtime > STALE_TMP_S:
                leftover.unlink()
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    write_durably(path, safetensors_bytes(cpu, metadata=metadata))
