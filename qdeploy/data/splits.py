"""A data spec (the built-in digits-shift, Fashion-MNIST or an ImageFolder path) as labelled train/val sets.

Training and the parity checks downstream (`qdeploy verify`, the pipeline) resolve a spec
here, with the same normalisation and the same seeded split, so a model is checked on
exactly the val images it was trained beside.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from qdeploy.model_io import model_input_size
from qdeploy.data import BUILTIN_DATA
from qdeploy.data import digits_shift, fashion_mnist
from qdeploy.data.digits_shift import digits_shift_datasets
from qdeploy.data.fashion_mnist import fashion_mnist_datasets, is_fashion_mnist
from qdeploy.data.image_folder import image_folder_datasets


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the model was pretrained with (timm's data config)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    return tuple(config["mean"]), tuple(config["std"])


def default_image_size(spec: str, model: nn.Module) -> int:
    """64 px for the 8x8 digits (every stroke kept, cheap), 32 px for the 28x28 Fashion-MNIST,
    the model's own input size for an ImageFolder."""
    if spec == BUILTIN_DATA:
        return digits_shift.DEFAULT_SIZE
    if is_fashion_mnist(spec):
        return fashion_mnist.DEFAULT_SIZE
    return int(model_input_size(model)[-1])


def in_memory(spec: str) -> bool:
    """Whether the set is tensor-backed (no files to decode, so no loader workers)."""
    return spec == BUILTIN_DATA or is_fashion_mnist(spec)


def labelled_splits(spec: str, model: nn.Module, size: int, val_fraction: float = 0.2,
                    seed: int = 0) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """(train, val, class names) of `spec` at `size` px, normalised for `model`."""
    mean, std = model_mean_std(model)
    if spec == BUILTIN_DATA:
        return digits_shift_datasets(mean, std, size, val_fraction=val_fraction, seed=seed)
    if is_fashion_mnist(spec):
        return fashion_mnist_datasets(spec, mean, std, size)
    return image_folder_datasets(spec, size, mean, std, val_fraction, seed)


def capped(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most `limit` items, a seeded random choice kept in dataset order."""
    if limit is None or limit >= len(dataset):
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(keep.tolist()))
