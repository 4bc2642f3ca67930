"""Privacy metrics of a reconstruction: MSE, PSNR and SSIM on images in [0, 1].

* MSE: mean squared error over all pixels of an image; the data-set value is the
  mean over images, which equals the reference's batch-weighted ``nn.MSELoss``
  (reference_notes §6.1) because every image has the same size. Theorem 1's ξ is
  on this per-pixel scale.
* PSNR: ``10 * log10(1 / MSE)`` (peak 1). ``psnr`` is the mean of per-image PSNRs;
  ``psnr_batch`` is the reference's number, PSNR of each evaluation batch's MSE
  averaged with batch-size weights (§6.2). -log is convex, so by Jensen
  ``psnr`` >= ``psnr_batch`` (reference_notes §6.2 states the opposite), and the
  gap grows with the spread of per-image errors. A perfect image is capped at
  ``PSNR_CAP_DB``.
* SSIM: torchmetrics' Gaussian SSIM (11x11 window, σ 1.5, K1 0.01, K2 0.03, data
  range 1, population covariance), averaged per image over the valid region only
  (a 5-pixel border is excluded, where the window would reach into padding), so
  it equals scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)``. It is not directly
  comparable to the paper's tables, which used pytorch_ssim (below).
* SSIM, reference (``ssim_ref``): the paper's number (reference_notes §6.3),
  pytorch_ssim's formula: the same normalised 11x11 Gaussian window (σ 1.5),
  applied per channel with zero padding 5 ("same" output), C1 = 0.01², C2 = 0.03²,
  averaged over the whole map including the border, where the window reaches
  into the zero padding. There the local "variances" and covariance gain a
  w(1-w)·mean² term (w: the window mass inside the image) that both images share,
  so on bright 32x32 images ``ssim_ref`` is *higher* than ``ssim`` (§6.3 says
  lower; the tests pin the direction). The reference's batch-size-weighted mean
  of batch means equals our mean over images.
"""

from __future__ import annotations

import torch

from cem.bounds import native_view
from cem.errors import MetricInputError

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_RANGE_TOLERANCE = 1e-4


def check_image_pair(recon: torch.Tensor, target: torch.Tensor) -> None:
    """Both (B, C, H, W), same shape, finite, within [0, 1]; raises ``MetricInputError`` otherwise."""
    if recon.dim() != 4 or recon.shape != target.shape:
        raise MetricInputError(
            f"expected reconstruction and target of the same (B, C, H, W) shape, got {tuple(recon.shape)} "
            f"and {tuple(target.shape)}"
        )
    for name, images in (("reconstruction", recon), ("target", target)):
        if images.numel() == 0:
            continue
        if not torch.isfinite(images).all():
            raise MetricInputError(f"expected finite {name} values, got NaN or inf")
        low, high = float(images.min()), float(images.max())
        if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise MetricInputError(f"expected {name} values in [0, 1], got [{low:.4g}, {high:.4g}]")


def mse_per_image(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B,) mean squared error per image."""
    check_image_pair(recon, target)
    return (recon.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for peak 1, elementwise; a zero MSE gives ``PSNR_CAP_DB``."""
    floor = 10.0 ** (-PSNR_CAP_DB / 10.0)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(floor))


def psnr_per_image(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B,) PSNR in dB of each image."""
    return psnr_from_mse(mse_per_image(recon, target))


def ssim_per_image(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B,) Gaussian SSIM of each image over its valid region (needs H, W >= 11)."""
    check_image_pair(recon, target)
    if min(recon.shape[-2:]) < SSIM_WINDOW:
        raise MetricInputError(
            f"expected images of at least {SSIM_WINDOW}x{SSIM_WINDOW} for SSIM, got {tuple(recon.shape[-2:])}"
        )
    # Imported here: torchmetrics' image package pulls in scipy and torchvision, seconds of start-up that every
    # process importing this module (the trainer, the attacker) would otherwise pay before it scores anything.
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, ssim_map = structural_similarity_index_measure(
        recon.float(),
        target.float(),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    border = SSIM_WINDOW // 2
    return ssim_map[..., border:-border, border:-border].flatten(1).mean(dim=1)


def _blur_matrix(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size) banded matrix M with M[i, j] = g[j - i + 5] (g pytorch_ssim's normalised 1-D Gaussian
    of 11 taps): M @ v is v blurred along one axis with zero padding 5, "same" output."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    gauss = torch.exp(-offsets.pow(2) / (2 * SSIM_SIGMA**2))
    gauss = gauss / gauss.sum()
    index = torch.arange(size)
    shift = index.view(1, -1) - index.view(-1, 1) + SSIM_WINDOW // 2  # j - i + 5
    inside = (shift >= 0) & (shift < SSIM_WINDOW)
    return torch.where(inside, gauss[shift.clamp(0, SSIM_WINDOW - 1)], 0.0).to(dtype=dtype, device=device)


def ssim_ref_per_image(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B,) SSIM as pytorch_ssim computes it (zero padding, whole map averaged).

    The paper's tables report this (reference_notes §6.3); see the module docstring."""
    check_image_pair(recon, target)
    return ssim_ref_unchecked(recon, target)


def ssim_ref_unchecked(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``ssim_ref_per_image`` without the input checks: differentiable and free of host syncs, for training
    losses (the ResSFL proxy, ``training.ressfl``). (B, C, H, W) x2, same shape, values in [0, 1] -> (B,)."""
    x, y = recon.float(), target.float()
    # The 11x11 window is the outer product of two 1-D Gaussians, so the zero-padded depthwise conv is
    # M_h @ image @ M_w^T with banded matrices: the same map up to rounding, and on CPU its backward
    # is far cheaper than a single-channel conv's (it runs every batch in ResSFL's training loss).
    rows = _blur_matrix(x.shape[-2], x.dtype, x.device)
    cols = _blur_matrix(x.shape[-1], x.dtype, x.device)
    planes = torch.stack([x, y, x * x, y * y, x * y])  # (5, B, C, H, W)
    mu_x, mu_y, blur_xx, blur_yy, blur_xy = (rows @ planes @ cols.T).unbind(dim=0)
    var_x = blur_xx - mu_x.pow(2)
    var_y = blur_yy - mu_y.pow(2)
    cov = blur_xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


class ReconstructionMeter:
    """Accumulates per-image MSE, PSNR and SSIM over evaluation batches.

    ``update`` takes one evaluation batch; its size also defines the reference's
    batch PSNR. ``summary`` returns ``{"mse", "psnr", "psnr_batch", "ssim", "ssim_ref", "n"}``,
    plus ``mse_native`` when ``native_size`` is given: the MSE of both images
    average-pooled to that side, the scale of the bound's ``estimate`` kind (cem.bounds).
    """

    def __init__(self, native_size: int | None = None) -> None:
        self.native_size = native_size
        self._mse_native = 0.0
        self._n = 0
        self._mse = 0.0
        self._psnr = 0.0
        self._psnr_batch = 0.0
        self._ssim = 0.0
        self._ssim_ref = 0.0

    def update(self, recon: torch.Tensor, target: torch.Tensor) -> None:
        recon, target = recon.detach(), target.detach()
        if recon.shape[0] == 0:
            return
        mse = mse_per_image(recon, target)
        batch = int(mse.numel())
        self._n += batch
        self._mse += float(mse.sum())
        self._psnr += float(psnr_from_mse(mse).sum())
        self._psnr_batch += batch * float(psnr_from_mse(mse.mean()))
        self._ssim += float(ssim_per_image(recon, target).sum())
        self._ssim_ref += float(ssim_ref_per_image(recon, target).sum())
        if self.native_size is not None:
            pooled = (native_view(recon.float(), self.native_size) - native_view(target.float(), self.native_size))
            self._mse_native += float(pooled.pow(2).mean(dim=1).sum())

    @property
    def count(self) -> int:
        return self._n

    def summary(self) -> dict[str, float]:
        if self._n == 0:
            raise MetricInputError("expected at least one scored image, got none")
        n = self._n
        return {
            "mse": self._mse / n,
            "psnr": self._psnr / n,
            "psnr_batch": self._psnr_batch / n,
            "ssim": self._ssim / n,
            "ssim_ref": self._ssim_ref / n,
            **({"mse_native": self._mse_native / n} if self.native_size is not None else {}),
            "n": n,
        }
