"""cem.metrics against scikit-image, a float64 scipy version of pytorch_ssim, and analytic values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from cem.errors import MetricInputError
from cem.metrics import (
    PSNR_CAP_DB,
    ReconstructionMeter,
    mse_per_image,
    psnr_per_image,
    ssim_per_image,
    ssim_ref_per_image,
)


def random_pairs(channels: int, n: int = 5, side: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, channels, side, side, generator=g)
    noise = torch.linspace(0.02, 0.4, n).view(n, 1, 1, 1)
    recon = (target + noise * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return recon, target


@pytest.mark.parametrize("channels,side", [(1, 32), (3, 32), (3, 20)])
def test_metrics_equal_scikit_image_on_random_pairs(channels: int, side: int) -> None:
    recon, target = random_pairs(channels, side=side, seed=channels + side)
    mse, psnr, ssim = mse_per_image(recon, target), psnr_per_image(recon, target), ssim_per_image(recon, target)
    for i in range(recon.shape[0]):
        x, y = target[i].numpy().astype(np.float64), recon[i].numpy().astype(np.float64)
        assert mse[i].item() == pytest.approx(mean_squared_error(x, y), rel=1e-5)
        assert psnr[i].item() == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-4)
        expected = structural_similarity(
            x, y, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert ssim[i].item() == pytest.approx(expected, abs=1e-5)


def pytorch_ssim_float64(x: np.ndarray, y: np.ndarray) -> float:
    """pytorch_ssim (reference_notes §6.3) for one (C, H, W) pair in float64: per-channel Gaussian
    window with zero padding ("same" output), C1 = 0.01², C2 = 0.03², mean over the whole map."""
    offsets = np.arange(11) - 5
    gauss = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(gauss, gauss) / gauss.sum() ** 2
    maps = []
    for a, b in zip(x, y, strict=True):
        def blur(image: np.ndarray) -> np.ndarray:
            return ndimage.correlate(image, window, mode="constant", cval=0.0)

        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        maps.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(maps))


@pytest.mark.parametrize("channels,height,width", [(1, 32, 32), (3, 32, 32), (3, 24, 40)])
def test_ssim_ref_equals_a_float64_pytorch_ssim(channels: int, height: int, width: int) -> None:
    g = torch.Generator().manual_seed(channels * height + width)
    target = torch.rand(4, channels, height, width, generator=g)
    noise = torch.linspace(0.02, 0.4, 4).view(4, 1, 1, 1)
    recon = (target + noise * torch.randn(target.shape, generator=g)).clamp(0, 1)
    ssim_ref = ssim_ref_per_image(recon, target)
    for i in range(recon.shape[0]):
        expected = pytorch_ssim_float64(recon[i].double().numpy(), target[i].double().numpy())
        assert ssim_ref[i].item() == pytest.approx(expected, abs=1e-5)


def test_zero_padding_changes_ssim_on_32x32_images() -> None:
    # At the border the zero-padded window's "variances" include w(1-w)·mean², a term both images
    # share, so for bright images with a blurred reconstruction pytorch_ssim scores higher than
    # the valid-region SSIM (not lower, as reference_notes §6.3 says).
    target = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = F.avg_pool2d(F.pad(target, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    blurred = F.avg_pool2d(F.pad(target, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    ssim, ssim_ref = ssim_per_image(blurred, target), ssim_ref_per_image(blurred, target)
    assert torch.all(ssim_ref > ssim + 0.1), (ssim, ssim_ref)


def test_identical_images_score_perfectly_and_psnr_is_capped() -> None:
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.all(mse_per_image(images, images) == 0)
    assert torch.all(psnr_per_image(images, images) == PSNR_CAP_DB)
    assert torch.allclose(ssim_per_image(images, images), torch.ones(3), atol=1e-5)
    assert torch.allclose(ssim_ref_per_image(images, images), torch.ones(3), atol=1e-5)


def test_meter_averages_per_image_and_per_image_psnr_is_at_least_the_batch_psnr() -> None:
    recon, target = random_pairs(1, n=8, seed=3)
    meter = ReconstructionMeter()
    meter.update(recon[:5], target[:5])
    meter.update(recon[5:], target[5:])
    summary = meter.summary()
    mse = mse_per_image(recon, target)
    assert summary["n"] == 8
    assert summary["mse"] == pytest.approx(mse.mean().item(), rel=1e-6)
    assert summary["psnr"] == pytest.approx(psnr_per_image(recon, target).mean().item(), rel=1e-6)
    expected_batch = (5 * 10 * math.log10(1 / mse[:5].mean().item())
                      + 3 * 10 * math.log10(1 / mse[5:].mean().item())) / 8
    assert summary["psnr_batch"] == pytest.approx(expected_batch, rel=1e-5)
    # -log is convex: the mean of per-image PSNRs is >= the PSNR of the mean MSE (Jensen).
    assert summary["psnr"] >= summary["psnr_batch"]
    assert summary["ssim"] == pytest.approx(ssim_per_image(recon, target).mean().item(), rel=1e-6)
    assert summary["ssim_ref"] == pytest.approx(ssim_ref_per_image(recon, target).mean().item(), rel=1e-6)


def test_bad_inputs_are_rejected_with_a_clear_message() -> None:
    good = torch.rand(2, 1, 32, 32)
    with pytest.raises(MetricInputError, match="same"):
        mse_per_image(good, torch.rand(2, 1, 16, 16))
    with pytest.raises(MetricInputError, match=r"in \[0, 1\]"):
        mse_per_image(good * 2, good)
    with pytest.raises(MetricInputError, match="finite"):
        mse_per_image(torch.full_like(good, float("nan")), good)
    with pytest.raises(MetricInputError, match="at least 11x11"):
        ssim_per_image(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(MetricInputError, match="at least one"):
        ReconstructionMeter().summary()
