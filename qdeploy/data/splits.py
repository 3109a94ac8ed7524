"""A data spec (the built-in digits-shift or an ImageFolder path) as labelled train/val sets.

Training and the parity checks downstream (`qdeploy verify`, the pipeline) resolve a spec
here, with the same normalisation and the same seeded split, so a model is checked on
exactly the val images it was trained beside.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from qdeploy.adaptation.report import model_input_size
from qdeploy.data import BUILTIN_DATA
from qdeploy.data.digits_shift import DEFAULT_SIZE, digits_shift_datasets
from qdeploy.data.image_folder import image_folder_datasets


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the model was pretrained with (timm's data config)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    return tuple(config["mean"]), tuple(config["std"])


def default_image_size(spec: str, model: nn.Module) -> int:
    """64 px for the 8x8 digits (every stroke kept, cheap), the model's own input size otherwise."""
    return DEFAULT_SIZE if spec == BUILTIN_DATA else int(model_input_size(model)[-1])


def labelled_splits(spec: str, model: nn.Module, size: int, val_fraction: float = 0.2,
                    seed: int = 0) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """(train, val, class names) of `spec` at `size` px, normalised for `model`."""
    mean, std = model_mean_std(model)
    if spec == BUILTIN_DATA:
        return digits_shift_datasets(mean, std, size, val_fraction=val_fraction, seed=seed)
    return image_folder_datasets(spec, size, mean, std, val_fraction, seed)


def capped(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most `limit` items, a seeded random choice kept in dataset order."""
    if limit is None or limit >= len(dataset):
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(keep.tolist()))
