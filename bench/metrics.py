"""Percentiles and image-quality metrics (SSIM, PSNR) in plain numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Wang, Bovik, Sheikh & Simoncelli (2004): 11x11 Gaussian window, sigma 1.5, K1/K2 below.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated as numpy does by default."""
    if len(values) == 0:
        raise ValueError("no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (0-255, float64) of an HxWx3 array; a 2-D array is taken as luma already."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim == 2:
        return rgb
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(offsets ** 2) / (2 * sigma ** 2))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation, keeping only positions where the window fits."""
    size = len(kernel)
    rows = image.shape[0] - size + 1
    cols = image.shape[1] - size + 1
    # Summing shifted slices keeps this vectorised: size passes per axis, no Python per pixel.
    across = sum(kernel[k] * image[:, k:k + cols] for k in range(size))
    return sum(kernel[k] * across[k:k + rows, :] for k in range(size))


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two same-size grey images (Gaussian window, Wang et al. 2004)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"need two 2-D arrays of one shape, got {x.shape} and {y.shape}")
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW} pixels on each side")
    kernel = _gaussian_kernel(SSIM_WINDOW, SSIM_SIGMA)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x = _filter_valid(x, kernel)
    mu_y = _filter_valid(y, kernel)
    var_x = _filter_valid(x * x, kernel) - mu_x ** 2
    var_y = _filter_valid(y * y, kernel) - mu_y ** 2
    cov = _filter_valid(x * y, kernel) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
             / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return float(index.mean())


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; infinite for identical images."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0:
        return math.inf
    return 10 * math.log10(data_range ** 2 / mse)
