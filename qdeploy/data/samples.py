"""Real photos shipped by scikit-image, for checks that need a natural image offline."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn


def cat_photo() -> Image.Image:
    """scikit-image's `data.chelsea()`: a tabby cat, 451x300 RGB."""
    from skimage import data

    return Image.fromarray(data.chelsea())


def preprocess_for(model: nn.Module, image: Image.Image) -> torch.Tensor:
    """A (1, C, H, W) batch prepared with the model's own timm eval transform."""
    from timm.data import create_transform, resolve_model_data_config

    transform = create_transform(**resolve_model_data_config(model))
    return transform(image.convert("RGB")).unsqueeze(0)


def imagenet_top_k(logits: torch.Tensor, k: int = 5) -> list[tuple[int, str, float]]:
    """(class index, ImageNet description, probability) of the k most likely classes."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    probs = logits.softmax(-1).squeeze(0)
    top = probs.topk(k)
    return [(int(i), info.index_to_description(int(i)), float(p)) for p, i in zip(top.values, top.indices)]
