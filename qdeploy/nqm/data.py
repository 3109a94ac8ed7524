"""Small, download-free data sets for probing learning-rate regimes.

Inputs are flattened and scaled to norm sqrt(d), so that `u . x / sqrt(d)` with N(0, 1)
weights has unit variance whatever the source: the kernel regimes then depend on the width,
not on the pixel range. Targets suit squared loss: +-1 for two classes, one-hot otherwise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from qdeploy.errors import QDeployError
from qdeploy.nqm.defaults import PROBE_IMAGE_SIZE, PROBE_SAMPLES


@dataclass(frozen=True)
class Split:
    """Train and test tensors; `y` has shape `(n, 1)` (+-1) or `(n, classes)` (one-hot)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def normalize_inputs(x: Tensor) -> Tensor:
    """Flatten each sample and scale it to norm sqrt(d)."""
    flat = x.reshape(x.shape[0], -1)
    return flat * (flat.shape[1] ** 0.5 / flat.norm(dim=1, keepdim=True).clamp_min(1e-12))


def squared_loss_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """+-1 column for two classes (one scalar output suffices), one-hot rows otherwise."""
    if num_classes == 2:
        return (2.0 * labels - 1.0).to(dtype).unsqueeze(1)
    return torch.nn.functional.one_hot(labels, num_classes).to(dtype)


def two_class_digits(
    classes: tuple[int, int],
    n_train: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Split:
    """Two classes of scikit-learn's 8x8 digits: a seeded train draw, the rest for testing.

    The digits ship with scikit-learn, so this runs offline; about 180 images per class.
    """
    from sklearn.datasets import load_digits

    if len(set(classes)) != 2 or not all(0 <= c <= 9 for c in classes):
        raise QDeployError(f"digit classes {classes} are invalid: pass two different digits from 0 to 9")
    digits = load_digits()
    keep = torch.as_tensor((digits.target == classes[0]) | (digits.target == classes[1]))
    x = normalize_inputs(torch.as_tensor(digits.data, dtype=dtype)[keep])
    labels = (torch.as_tensor(digits.target)[keep] == classes[1]).long()
    if not 0 < n_train < len(labels):
        raise QDeployError(
            f"cannot draw {n_train} training digits from classes {classes}: ask for 1 to {len(labels) - 1}"
        )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    y = squared_loss_targets(labels, 2, dtype)
    return Split(x[train], y[train], x[test], y[test])


def image_folder_batch(
    root: str | Path,
    *,
    image_size: int = PROBE_IMAGE_SIZE,
    max_samples: int = PROBE_SAMPLES,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """A seeded batch of up to `max_samples` images from an ImageFolder tree.

    Images are resized to `image_size` squared (the probe's cost grows with the input size)
    and normalized like the digits; targets follow `squared_loss_targets`. The tree is read
    by the training data code, so an undecodable image is skipped with a warning naming it.
    """
    from torchvision import transforms

    from qdeploy.data.image_folder import ImageFiles, scan_image_folder

    root = Path(root)
    if not root.is_dir():
        raise QDeployError(f"no such directory {root}: pass an ImageFolder root (one sub-folder per class) or 'digits'")
    classes, samples = scan_image_folder(root)
    dataset = ImageFiles(samples, transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()]))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    decoded = list(itertools.islice(filter(None, (dataset[i] for i in order)), max_samples))
    if not decoded:
        raise QDeployError(f"no image under {root} could be decoded; check the files named in the warnings")
    images, labels = zip(*decoded)
    x = normalize_inputs(torch.stack(images).to(dtype))
    return x, squared_loss_targets(torch.as_tensor(labels), len(classes), dtype)


def accuracy(output: Tensor, target: Tensor) -> float:
    """Classification accuracy under `squared_loss_targets`: sign for +-1, argmax for one-hot."""
    if target.shape[1] == 1:
        return (output.sign() == target).double().mean().item()
    return (output.argmax(1) == target.argmax(1)).double().mean().item()
