"""Optimisation-based inversion: the image whose features best explain the intercepted ones.

The learned attacks (decoder, GAN) only map features to images from examples. A white-box
attacker also holds the encoder E and the client transform (σ, dropout p, top-k) from the
bundle, and can ask directly which image explains an intercepted z. Under the client's
Gaussian noise the likelihood is p(z | x) ∝ exp(−‖m ⊙ (E(x) − z)‖² / (2σ²)), so for each
intercepted z the attack minimises

    L(x) = ‖m ⊙ (E(x) − z)‖² / (2σ²) + τ · TV(x)

over images x in [0, 1] (ResSFL's "model-free" attack and the feature-matching family
of split-learning attacks do the same). The pieces:

* **m**, the entries the client kept. Dropout and top-k zero entries; a Sigmoid output is
  never exactly 0, so with either defense on an exact zero in z marks a dropped entry, which
  says nothing the likelihood can use and is left out. Without them m is all ones.
* **σ** is the bundle's. Without noise (σ = 0) the likelihood is a point mass; the attack
  then assumes ``sigma_floor`` (0.01, about a float16 wire's precision at these values) so
  τ keeps one meaning across bundles.
* **TV** is the anisotropic total variation (sum of absolute differences between
  neighbouring pixels, per image), the classic prior of optimisation attacks: it prefers
  piecewise-smooth images over the high-frequency patterns that also match E(x) = z.
* **τ** is chosen on the attacker's own validation images (``TV_WEIGHTS``, the lowest
  validation MSE wins), never on scored images.
* **The optimiser**: x = sigmoid(u), so x stays in (0, 1) without clamping; Adam on u at
  ``lr`` (0.1) with a cosine decay to ``lr``/100 over ``steps`` (300) steps, images in
  batches of ``batch_size``, each image's objective independent of the batch (summed, not
  averaged). ``restarts``: the first start is the attacker's mean training image (or, in
  the hybrid, the decoder attack's reconstruction); further starts are uniform images seeded
  by the attack's seed and the image's index (not its place in a batch, so how the images
  are batched or split over processes does not change them); each image keeps the start
  with the lowest final objective (no ground truth is used to choose).
* **Gradients reach only x.** The encoder runs in eval mode with its parameters frozen
  for the attack's duration (restored afterwards), under ``torch.enable_grad`` (the
  evaluation code calls inversion networks under ``no_grad``).

``decoder+optimize`` (the hybrid) starts from the decoder attack's reconstruction and
refines it with the same objective; the audit reports the decoder's own validation MSE
beside the refined one, so whether refinement helped is visible per model.

Convergence: the chosen τ runs again on the validation images with half the steps; if the
full budget's validation MSE is lower by more than 2 %, more steps would likely help and the
attack is flagged as still improving (``TrainedAttack.still_improving``, the decoder attack's
half-budget check: after a cosine decay to its floor the last steps move little, converged or
not). The history holds the validation MSE every tenth of the steps (the mean over restarts).

Data-parallel (``distributed``): every image's optimisation is independent of the others,
so each rank inverts a contiguous share of the images of every ``invert`` call (the
validation images of each τ, the scored images) and the reconstructions are gathered on
every rank (``cem.distributed.all_gather_rows``): N processes invert N times the images
per unit of time, and give one process's reconstructions, image for image (up to the
float rounding of batches of other sizes), so τ is chosen alike on every rank.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from attacker.attacks.data import AttackSplit, FeatureSet
from attacker.attacks.evaluate import iterate_reconstructions
from attacker.attacks.loop import HalfBudgetCheck, TrainedAttack
from attacker.attacks.monitor import ProgressMonitor
from cem.distributed import SINGLE_PROCESS, DistributedContext, all_gather_rows, all_reduce_sum, shard_range
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig, obfuscate

StepCallback = Callable[[int, slice, torch.Tensor], None]  # (step, rows of the batch, current images)

TV_WEIGHTS = (0.0, 0.3, 1.0, 3.0, 10.0)  # τ candidates, chosen on the attacker's validation images
CURVE_POINTS = 10  # validation MSE recorded every tenth of the steps
LR_FLOOR_RATIO = 0.01
_LOGIT_EPS = 1e-3
_SEED_MASK = 2**64 - 1


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s random starts: distinct per (seed, index) for indices below 2**32."""
    return (seed * 2**32 + index) & _SEED_MASK


@dataclass(frozen=True)
class OptimizeAttackConfig:
    """Settings of the optimisation attack (see the module docstring); ``tv_weight=None``: chosen on validation."""

    steps: int = 300
    lr: float = 0.1
    restarts: int = 1
    batch_size: int = 128
    tv_weight: float | None = None
    sigma_floor: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1 or self.batch_size < 1:
            raise ConfigError(f"expected steps, restarts and batch_size >= 1, got {self.steps}, {self.restarts}, "
                              f"{self.batch_size}")
        if not self.lr > 0 or not self.sigma_floor > 0:
            raise ConfigError(f"expected lr > 0 and sigma_floor > 0, got {self.lr} and {self.sigma_floor}")
        if self.tv_weight is not None and not self.tv_weight >= 0:
            raise ConfigError(f"expected tv_weight >= 0 or None, got {self.tv_weight}")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B,) anisotropic total variation: the sum of absolute neighbour differences."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1))


def kept_entries(z: torch.Tensor, obfuscation: ObfuscationConfig) -> torch.Tensor:
    """1 where the client sent a value, 0 where dropout or top-k zeroed it (all ones without either)."""
    if obfuscation.dropout_p > 0 or obfuscation.topk_ratio > 0:
        return (z != 0).to(z.dtype)
    return torch.ones_like(z)


@contextmanager
def _frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode with no parameter requiring grad; both restored on exit."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.eval().requires_grad_(False)
    try:
        yield module
    finally:
        for param, flag in zip(module.parameters(), flags, strict=True):
            param.requires_grad_(flag)
        module.train(was_training)


class FeatureMatchingInverter(nn.Module):
    """Inverts transmitted features by optimisation; an ``nn.Module`` so that evaluation and the audit treat it
    like any inversion network: ``forward(z)`` (B, *feature_shape) as sent -> (B, C, S, S) images in [0, 1].

    ``init`` (a trained decoder, or None) gives the first start; otherwise it is ``mean_image``. The encoder
    and ``init`` are held outside the module tree, so ``train()``/``eval()`` and ``state_dict`` never touch them.
    ``monitor`` is polled at every step, so an audit can be cancelled in the middle of an optimisation.
    ``distributed``: each ``invert`` call is split over its ranks and gathered (module docstring); every rank
    must make the same calls.
    """

    mean_image: torch.Tensor  # (C, S, S) buffer: the first start without ``init``

    def __init__(self, encoder: nn.Module, obfuscation: ObfuscationConfig, config: OptimizeAttackConfig,
                 tv_weight: float, mean_image: torch.Tensor, *, init: nn.Module | None = None, seed: int = 0,
                 monitor: ProgressMonitor | None = None, distributed: DistributedContext = SINGLE_PROCESS) -> None:
        super().__init__()
        self._parts = (encoder, init)  # a tuple: not registered as submodules
        self.monitor = monitor or ProgressMonitor()
        self._plan: tuple[int, int] | None = None  # (images planned, images done) across forward calls
        self.obfuscation = obfuscation
        self.config = config
        self.tv_weight = float(tv_weight)
        self.sigma = obfuscation.noise_std if obfuscation.noise_std > 0 else config.sigma_floor
        self.register_buffer("mean_image", mean_image.detach().clone())
        self.seed = seed
        self.distributed = distributed

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.invert(z)

    def track(self, monitor: ProgressMonitor, images: int) -> None:
        """Report to ``monitor`` one progress over the next ``images`` images, however the caller splits them
        into ``forward`` calls (the evaluation code calls it once per chunk of features)."""
        self.monitor, self._plan = monitor, (images, 0)

    def invert(self, z: torch.Tensor, *, on_step: StepCallback | None = None) -> torch.Tensor:
        """Reconstructions of ``z``, batch by batch; ``on_step(step, rows, x)`` after each step of each batch,
        ``rows`` the batch's rows of ``z`` and ``x`` its current images. With ``distributed`` this rank inverts
        only its ``shard_range`` of ``z`` (``on_step`` sees those rows) and returns every rank's images."""
        encoder, _ = self._parts
        config = self.config
        planned, offset = self._plan if self._plan is not None else (z.shape[0], 0)
        work = max(1, planned * config.restarts * config.steps)  # one unit: one step of one image
        done = [offset * config.restarts * config.steps]
        ranks = self.distributed.world_size  # each rank does about 1/ranks of the work: progress counts it all

        def step_done(step: int, rows: slice, x: torch.Tensor) -> None:
            done[0] += x.shape[0] * ranks
            first = offset + rows.start
            self.monitor.report(done[0] / work, f"optimize τ={self.tv_weight:g}: images {first + 1}-"
                                                f"{first + x.shape[0]} of {planned}, step {step}/{config.steps}")
            if on_step is not None:
                on_step(step, rows, x)

        lo, hi = shard_range(z.shape[0], self.distributed)
        parts = []
        with _frozen(encoder), torch.enable_grad():
            for start in range(lo, hi, config.batch_size):
                rows = slice(start, min(start + config.batch_size, hi))
                parts.append(self._invert_batch(encoder, z[rows].detach(), rows, offset + start, step_done))
        if self._plan is not None:
            self._plan = (planned, offset + z.shape[0])
        mine = torch.cat(parts) if parts else z.new_zeros((0, *self.mean_image.shape))
        return all_gather_rows(mine, z.shape[0], self.distributed)

    def _starts(self, z: torch.Tensor, first_index: int) -> list[torch.Tensor]:
        """Initial images of each restart (B, C, S, S) in (0, 1); ``first_index``: the index of z's first image
        among the images inverted so far (``track``), which seeds each image's random starts."""
        _, init = self._parts
        if init is not None:
            first = torch.cat([r for _, r in iterate_reconstructions(init, z, None, seed=self.seed)])
        else:
            first = self.mean_image.expand(z.shape[0], *self.mean_image.shape)
        extra = self.config.restarts - 1
        if extra == 0:
            return [first]
        per_image = [torch.rand((extra, *self.mean_image.shape), device=z.device,
                                generator=torch.Generator(device=z.device).manual_seed(
                                    image_seed(self.seed, first_index + i)))
                     for i in range(z.shape[0])]
        return [first, *torch.stack(per_image, dim=1).unbind(0)]  # restart k: (B, C, S, S)

    def _objective(self, encoder: nn.Module, x: torch.Tensor, z: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """(B,) the per-image objective L(x) of the module docstring."""
        misfit = ((encoder(x) - z) * kept).pow(2).flatten(1).sum(1) / (2 * self.sigma**2)
        return misfit + self.tv_weight * total_variation(x)

    def _invert_batch(self, encoder: nn.Module, z: torch.Tensor, rows: slice, first_index: int,
                      on_step: StepCallback) -> torch.Tensor:
        kept = kept_entries(z, self.obfuscation)
        best = best_loss = None
        for start in self._starts(z, first_index):
            u = torch.logit(start.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)).detach().requires_grad_(True)
            optimizer = torch.optim.Adam([u], lr=self.config.lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.config.steps,
                                                                  eta_min=self.config.lr * LR_FLOOR_RATIO)
            for step in range(1, self.config.steps + 1):
                self.monitor.check()
                optimizer.zero_grad(set_to_none=True)
                self._objective(encoder, torch.sigmoid(u), z, kept).sum().backward()
                optimizer.step()
                schedule.step()
                on_step(step, rows, torch.sigmoid(u).detach())
            with torch.no_grad():
                x = torch.sigmoid(u)
                loss = self._objective(encoder, x, z, kept)
            if best is None or best_loss is None:
                best, best_loss = x, loss
            else:
                better = loss < best_loss
                best = torch.where(better.view(-1, 1, 1, 1), x, best)
                best_loss = torch.minimum(loss, best_loss)
        assert best is not None
        return best.detach()


def _validation_run(inverter: FeatureMatchingInverter, val: FeatureSet, sent: torch.Tensor
                    ) -> tuple[float, list[dict[str, float | None]]]:
    """Invert the validation features; -> (final MSE, validation MSE every tenth of the steps)."""
    config = inverter.config
    marks = {max(1, round(config.steps * (i + 1) / CURVE_POINTS)) for i in range(CURVE_POINTS)}
    squared = dict.fromkeys(marks, 0.0)

    def on_step(step: int, rows: slice, x: torch.Tensor) -> None:
        if step in marks:
            squared[step] += float((x - val.images[rows]).pow(2).flatten(1).mean(1).sum())

    final = inverter.invert(sent, on_step=on_step)  # every rank's images, on every rank
    if inverter.distributed.enabled:  # on_step saw this rank's images only
        sums = torch.tensor([squared[step] for step in sorted(marks)], dtype=torch.float64, device=final.device)
        squared.update(zip(sorted(marks), all_reduce_sum(sums, inverter.distributed).tolist(), strict=True))
    mse = float((final - val.images).pow(2).flatten(1).mean(1).mean())
    # each mark is hit once per restart: the curve is the mean over the restarts' current images
    curve: list[dict[str, float | None]] = [
        {"epoch": float(step), "val_mse": squared[step] / (len(val) * config.restarts)} for step in sorted(marks)]
    return mse, curve


def train_optimize_attack(
    split: AttackSplit,
    obfuscation: ObfuscationConfig,
    encoder: nn.Module,
    config: OptimizeAttackConfig = OptimizeAttackConfig(),
    *,
    init: nn.Module | None = None,
    seed: int = 0,
    monitor: ProgressMonitor | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> TrainedAttack:
    """Choose τ on ``split.val`` (unless ``config.tv_weight`` is set) and return the inverter with it.

    ``init``: a trained decoder whose reconstruction is the first start (the hybrid). Without validation
    images τ falls back to the middle of ``TV_WEIGHTS`` and nothing is judged. ``distributed``: the validation
    images are split over the ranks, and so are the images the returned inverter is later given."""
    monitor = monitor or ProgressMonitor()
    started = time.perf_counter()
    mean_image = split.fit.images.float().mean(0).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
    candidates: tuple[float, ...] = TV_WEIGHTS if config.tv_weight is None else (config.tv_weight,)
    if len(split.val) == 0:
        candidates = candidates[len(candidates) // 2 :][:1]

    def build(tv: float, watch: ProgressMonitor) -> FeatureMatchingInverter:
        return FeatureMatchingInverter(encoder, obfuscation, config, tv, mean_image, init=init, seed=seed,
                                       monitor=watch, distributed=distributed)

    trials: dict[float, tuple[float, list[dict[str, float | None]]]] = {}
    half_budget = None
    if len(split.val):
        generator = torch.Generator(device=split.val.features.device).manual_seed(seed)
        sent = obfuscate(split.val.features, obfuscation, generator)  # one draw of the client's transform
        slots = len(candidates) + 1  # the τ trials, then the half-budget run (half as long)
        for i, tv in enumerate(candidates):
            trials[tv] = _validation_run(build(tv, monitor.child(i / slots, 1 / slots)), split.val, sent)
    chosen = min(trials, key=lambda tv: trials[tv][0]) if trials else candidates[0]
    if trials and config.steps >= 2:  # would more steps help? the chosen τ again with half the steps
        half = dataclasses.replace(config, steps=config.steps // 2)
        inverter = FeatureMatchingInverter(encoder, obfuscation, half, chosen, mean_image, init=init, seed=seed,
                                           monitor=monitor.child(1 - 1 / slots, 1 / slots), distributed=distributed)
        half_budget = HalfBudgetCheck(half.steps, _validation_run(inverter, split.val, sent)[0], trials[chosen][0])
    history = trials[chosen][1] if trials else []
    # scoring polls the same cancellation; its progress is the caller's to place (run_audit gives it a range)
    scoring = ProgressMonitor(should_stop=monitor.should_stop)
    final = build(chosen, scoring)
    extra: dict[str, object] = {
        "tv_weight": chosen, "steps": config.steps, "restarts": config.restarts, "lr": config.lr,
        "steps_per_image": config.steps * config.restarts, "sigma": final.sigma,
        "val_mse_by_tv_weight": {str(tv): mse for tv, (mse, _) in trials.items()},
        "selection_s": round(time.perf_counter() - started, 3),
    }
    monitor.report(1.0, f"optimize: τ = {chosen:g}")
    return TrainedAttack(final, history, best_epoch=config.steps, half_budget=half_budget, extra=extra)
