"""ResSFL's proxy attacker: an inversion network trained alongside the encoder (reference_notes §4.5).

ResSFL (paper ref [29], the "ResSFL" and, with Gaussian noise, "Noise_ARL" rows of
Table 1) trains the encoder against a proxy of the model-inversion attacker:

* **Proxy.** ``cem.models.InversionNetwork`` at 4 residual blocks of 64 channels,
  the reference's ``res_normN4C64`` (half the depth of the attacker's 8-block
  decoder; 415,091 parameters at 8x8x8 features and 3x32x32 images, as the
  reference's). Its upsampling count comes from the real shapes, so FaceScrub's
  12 -> 48 side gets two stages (the reference's size formula gave 24x24, B20).
* **Pre-training.** ``pretrain``: ``pretrain_epochs`` epochs of Adam (``lr``,
  cosine-annealed to lr/100, the reference's 1e-3 -> 1e-5) on MSE between the proxy's
  reconstruction and x, with the encoder frozen at its initial weights in eval mode.
  The pairs come from the training split (the reference used 90 % of the test set, B23).
* **Per batch.** ``update``: one Adam step (``lr``, decayed by ``LR_DECAY`` at the
  trainer's milestones through ``end_epoch``) on -SSIM(proxy(z_sent), x) with the
  batch's features detached, before the encoder's step, as in the reference
  (which used the eval-mode encoder and a second forward; the training-mode
  features of the same forward are used here, which saves that forward).
* **Penalty.** ``penalty``: s = mean SSIM(proxy(z_sent), x) over the batch with
  the proxy in eval mode and its weights frozen, and
  ``weight · max(s − ssim_threshold, 0)``: the encoder is pushed only while the
  proxy's reconstructions are better than the threshold (0.5 CIFAR/digits, 0.6
  FaceScrub/TinyImageNet in the reference, on pytorch_ssim's scale, hence
  ``cem.metrics.ssim_ref_unchecked``). The term joins the task loss, the other
  defenses and CEM in the trainer's single backward.

**Which features (B12).** The proxy is fitted on, and the penalty is computed
from, ``z_sent``: the tensor the decoder consumes and the server (or a tap)
receives, i.e. the encoder output after the bundle's Gaussian noise (and
dropout/top-k, when those are on). The reference used the clean z for both,
even in Noise_ARL, so its proxy modelled an attacker who never sees noise: the
encoder was then penalised for leakage the noise already hid, and not for what a
real attacker on noisy features recovers. With ``z_sent`` the adversarial game
is played against the attacker the system actually faces (B16's advice too),
and the noise draw is the same one the decoder trains on.

The proxy exists only in training: bundles carry no proxy weights; the manifest
records the defense and its settings (``training.defenses.ResSFLDefense``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cem.errors import ConfigError
from cem.metrics import ssim_ref_unchecked
from cem.models import InversionConfig, InversionNetwork
from cem.obfuscation import ObfuscationConfig, obfuscate

logger = logging.getLogger(__name__)

PROXY_BLOCKS = 4  # res_normN4C64 (reference_notes §4.5)
PROXY_CHANNELS = 64
PRETRAIN_FINAL_LR_FACTOR = 0.01  # cosine 1e-3 -> 1e-5 in the reference
LR_DECAY = 0.2  # the reference's proxy MultiStepLR γ


@dataclass(frozen=True)
class ProxySetup:
    """What a training run tells an adversarial defense: the shapes to invert, the client transform,
    the trainer's lr milestones (epochs) and the device."""

    feature_shape: tuple[int, int, int]
    image_channels: int
    image_size: int
    obfuscation: ObfuscationConfig
    milestones: tuple[int, ...]
    device: torch.device


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Build the graph without the module's weights: gradients reach its input only."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class ProxyAdversary:
    """The proxy inversion network and its optimiser; the stateful half of ``ResSFLDefense``.

    weight: α of the penalty (> 0); ssim_threshold: in [0, 1); lr: Adam's learning rate;
    pretrain_epochs: >= 0 epochs of pre-training before the first encoder step.
    """

    def __init__(
        self,
        proxy: InversionConfig,
        setup: ProxySetup,
        *,
        weight: float,
        ssim_threshold: float,
        lr: float,
        pretrain_epochs: int,
    ) -> None:
        if setup.image_size < 11:
            raise ConfigError(f"expected images of at least 11x11 for the proxy's SSIM, got {setup.image_size}")
        self.setup = setup
        self.weight = weight
        self.ssim_threshold = ssim_threshold
        self.lr = lr
        self.pretrain_epochs = pretrain_epochs
        self.proxy = InversionNetwork(proxy).to(setup.device)
        self.optimizer = torch.optim.Adam(self.proxy.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(setup.milestones), gamma=LR_DECAY
        )

    def pretrain(self, encoder: nn.Module, loader: DataLoader, generator: torch.Generator,
                 show_progress: bool = False) -> float:
        """Fit the proxy on (transmitted features of ``encoder`` as it is now, x); -> last epoch's mean MSE.

        The encoder runs in eval mode without gradients and is returned to its mode.
        ``generator`` draws the client transform's noise (never the training loop's). ``show_progress``:
        a progress bar per pre-training epoch on stderr (minutes at the default 30 epochs on a CPU).
        """
        if self.pretrain_epochs == 0:
            return float("nan")
        optimizer = torch.optim.Adam(self.proxy.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.pretrain_epochs, eta_min=self.lr * PRETRAIN_FINAL_LR_FACTOR
        )
        device = self.setup.device
        was_training = encoder.training
        encoder.eval()
        self.proxy.train()
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        try:
            for _ in tqdm(range(self.pretrain_epochs), desc="ResSFL proxy", unit="epoch", disable=not show_progress):
                totals.zero_()
                for x, _labels in loader:
                    x = x.to(device, non_blocking=True)  # (B, C, S, S) in [0, 1]
                    with torch.no_grad():
                        sent = obfuscate(encoder(x), self.setup.obfuscation, generator)
                    loss = F.mse_loss(self.proxy(sent), x)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    totals[0] += loss.detach().double() * x.shape[0]
                    totals[1] += x.shape[0]
                scheduler.step()
        finally:
            encoder.train(was_training)
        mse = float(totals[0] / totals[1].clamp_min(1))
        logger.info("ResSFL proxy pre-trained for %d epochs: reconstruction MSE %.5f", self.pretrain_epochs, mse)
        return mse

    def update(self, x: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        """One proxy step on -SSIM(proxy(sent), x), sent detached. x: (B, C, S, S) in [0, 1];
        sent: (B, *feature_shape) what the decoder consumes. -> the step's mean SSIM (detached)."""
        self.proxy.train()
        ssim = ssim_ref_unchecked(self.proxy(sent.detach()), x).mean()
        self.optimizer.zero_grad(set_to_none=True)
        (-ssim).backward()
        self.optimizer.step()
        return ssim.detach()

    def penalty(self, x: torch.Tensor, sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (weight·max(s − threshold, 0), s), s the batch's mean SSIM of the eval-mode proxy.

        Differentiable in ``sent`` (so in the encoder), not in the proxy's weights."""
        self.proxy.eval()
        with _frozen(self.proxy):
            ssim = ssim_ref_unchecked(self.proxy(sent), x).mean()
        return self.weight * (ssim - self.ssim_threshold).clamp_min(0.0), ssim.detach()

    def end_epoch(self) -> None:
        """Advance the proxy's lr schedule (×``LR_DECAY`` at the trainer's milestones)."""
        self.scheduler.step()


def adversarial_terms(
    adversaries: Sequence[ProxyAdversary], x: torch.Tensor, sent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Update every proxy one step, then -> (summed penalty for the encoder, summed penalty SSIM), or None."""
    if not adversaries:
        return None
    penalties, ssims = [], []
    for adversary in adversaries:
        adversary.update(x, sent)
        penalty, ssim = adversary.penalty(x, sent)
        penalties.append(penalty)
        ssims.append(ssim)
    return torch.stack(penalties).sum(), torch.stack(ssims).sum()
