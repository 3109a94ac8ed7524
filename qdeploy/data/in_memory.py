"""Labelled grey images held in one tensor, served as normalised RGB model inputs.

The built-in sets (digits-shift, Fashion-MNIST) fit in memory, so they skip file decoding
and loader workers. Fashion-MNIST keeps its 70,000 images as uint8 at 28x28 and resizes
each on access: a float copy at 64 px would take 1 GB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class NormalizedImages(Dataset):
    """(image, label) pairs from a grey (N, 1, H, W) tensor, as normalised 3-channel images.

    images: float in [0, 1], or uint8 in [0, 255]. size: resize each image to size x size
    (bilinear) on access; None serves them at their stored size.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 mean: tuple[float, ...], std: tuple[float, ...], size: int | None = None):
        self.images, self.labels, self.size = images, labels, size
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if image.dtype == torch.uint8:
            image = image.float().div(255.0)
        if self.size is not None and image.shape[-1] != self.size:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear",
                                  align_corners=False, antialias=True)[0].clamp(0.0, 1.0)
        image = image.expand(len(self.mean), -1, -1)
        return (image - self.mean) / self.std, int(self.labels[index])
