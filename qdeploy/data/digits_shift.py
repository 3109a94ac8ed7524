"""The built-in training data: scikit-learn's digits scans under a named nonlinear shift.

Why this dataset: `qdeploy train` with no arguments must train on real images without a
download. scikit-learn ships `load_digits()`: 1,797 real scans of handwritten digits 0-9
(the UCI "optdigits" set, 43 writers, 8x8 pixels with 17 grey levels), about 180 per class.

Why a shift: the pretrained ImageNet model has never seen these images, and a plain
upscaled digit is close to linearly separable, which would not exercise the quadratic term.
The target domain "gamma-elastic-invert" applies, per image and reproducibly from `seed`:

1. upscaling 8x8 -> `size` x `size` (bicubic; default 64, small enough for CPU training,
   large enough that the pretrained EfficientNet-Lite0 stem still sees strokes, not pixels);
2. an elastic warp: a random smooth displacement field (a 4x4 grid of normal offsets with
   std `ELASTIC_STD` of the image width, bicubically upsampled), applied with bilinear
   resampling and zero fill;
3. a gamma curve `x ** g` with `g` log-uniform in [1/`GAMMA_RANGE`, `GAMMA_RANGE`], a
   per-image nonlinear contrast change (thin grey strokes in some images, bold in others);
4. contrast inversion `1 - x`: dark strokes on white paper, the opposite of the source scans.

`shift="none"` keeps only step 1 (the clean source domain). The output is RGB (the grey
image repeated, as pretrained stems expect three channels), normalised with the model's
mean/std. The val split is stratified and seeded, so every run sees the same split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from qdeploy.data.image_folder import stratified_split
from qdeploy.data.in_memory import NormalizedImages
from qdeploy.errors import QDeployError

SHIFTS = ("gamma-elastic-invert", "none")
DEFAULT_SHIFT = "gamma-elastic-invert"
DEFAULT_SIZE = 64
ELASTIC_STD = 0.04  # displacement std as a fraction of the image width
GAMMA_RANGE = 2.5
CLASSES = tuple(str(digit) for digit in range(10))


def digits_images(size: int = DEFAULT_SIZE, shift: str = DEFAULT_SHIFT, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as a (N, 1, size, size) float tensor in [0, 1], and their labels."""
    if shift not in SHIFTS:
        raise QDeployError(f"unknown digits shift {shift!r}; choose one of {', '.join(SHIFTS)}")
    if size < 8:
        raise QDeployError(f"digits image size must be >= 8 (the scans are 8x8), got {size}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    if shift == "none":
        return images, labels
    generator = torch.Generator().manual_seed(seed)
    count = images.shape[0]
    coarse = torch.randn(count, 2, 4, 4, generator=generator) * (2.0 * ELASTIC_STD)  # [-1, 1] coords span 2
    displacement = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    identity = F.affine_grid(torch.eye(2, 3).expand(count, 2, 3), [count, 1, size, size], align_corners=False)
    warped = F.grid_sample(images, identity + displacement.permute(0, 2, 3, 1), mode="bilinear",
                           padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)
    log_gamma = (torch.rand(count, 1, 1, 1, generator=generator) * 2.0 - 1.0) * math.log(GAMMA_RANGE)
    return 1.0 - warped.pow(log_gamma.exp()), labels


def digits_shift_datasets(mean: tuple[float, ...], std: tuple[float, ...], size: int = DEFAULT_SIZE,
                          shift: str = DEFAULT_SHIFT, val_fraction: float = 0.2,
                          seed: int = 0) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """Train and val sets of the shifted digits, normalised for a model with `mean`/`std`.

    The shift and split both use `seed`, so runs with the same seed see identical data.
    """
    images, labels = digits_images(size, shift, seed)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    train = NormalizedImages(images[train_idx], labels[train_idx], mean, std)
    val = NormalizedImages(images[val_idx], labels[val_idx], mean, std)
    return train, val, CLASSES
