"""The user's own images: an ImageFolder tree, a seeded stratified val split, bad-image skipping.

Layouts accepted (one sub-folder per class, torchvision's ImageFolder convention):
    root/<class>/<image>                     val split held out with `val_fraction`
    root/train/<class>/..., root/val/<class>/...   (or `validation/`) an explicit val set

An image that fails to decode is skipped with a `SkippedImageWarning` naming the file, and
the collate function counts it, so a run reports how many samples it lost instead of
silently training on less (or crashing hours in on one truncated JPEG).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from qdeploy.errors import QDeployError

VAL_FOLDERS = ("val", "validation")
Sample = tuple[torch.Tensor, int]


class SkippedImageWarning(UserWarning):
    """An image file could not be decoded and was left out of its batch."""


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and val indices with each class split in the same proportion (seeded)."""
    if not 0.0 < val_fraction < 1.0:
        raise QDeployError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_val = max(1, round(len(members) * val_fraction))
        if n_val >= len(members):
            raise QDeployError(
                f"class {cls} has {len(members)} image(s): too few to hold out {val_fraction:.0%} for "
                "validation; add images or give a separate val/ folder"
            )
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


class ImageFiles(Dataset):
    """(path, label) pairs decoded on access; an undecodable file yields None (see the collate)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample | None:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            warnings.warn(f"skipping {path}: cannot decode it as an image ({exc})", SkippedImageWarning, stacklevel=1)
            return None
        return self.transform(rgb), label


def collate_skipping_bad(samples: list[Sample | None]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """(images, labels, skipped): the decodable samples batched, and how many were dropped."""
    good = [sample for sample in samples if sample is not None]
    skipped = len(samples) - len(good)
    if not good:
        return None, None, skipped
    images, labels = default_collate(good)
    return images, labels, skipped


def scan_image_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, (path, label) pairs) of one ImageFolder tree; >= 2 classes, none empty."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:
        raise QDeployError(f"{folder} has no class sub-folders; put each class's images in {folder}/<class>/") from None
    if len(classes) < 2:
        raise QDeployError(f"{folder} has {len(classes)} class folder ({', '.join(classes)}); a classifier needs >= 2")
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty:
        raise QDeployError(
            f"class folder(s) {', '.join(empty)} in {folder} hold no images "
            f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folders"
        )
    return classes, samples


def _transforms(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Callable, Callable]:
    """Train: random-resized crop + flip (the standard ImageNet-style recipe); val: resize + centre crop."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=bicubic),
                       T.RandomHorizontalFlip(), *tail])
    val = T.Compose([T.Resize(round(image_size / 0.875), interpolation=bicubic), T.CenterCrop(image_size), *tail])
    return train, val


def image_folder_datasets(root: str | Path, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                          val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """Train and val sets from an ImageFolder tree (see the module docstring for layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise QDeployError(
            f"data folder {root} does not exist; pass an ImageFolder directory (one sub-folder per class) "
            "or the built-in 'digits-shift'"
        )
    train_tf, val_tf = _transforms(image_size, mean, std)
    val_dir = next((root / name for name in VAL_FOLDERS if (root / name).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        classes, train_samples = scan_image_folder(root / "train")
        val_classes, val_samples = scan_image_folder(val_dir)
        if val_classes != classes:
            raise QDeployError(
                f"class mismatch: {root / 'train'} has {len(classes)} classes, {val_dir} has {len(val_classes)}; "
                f"only in train: {sorted(set(classes) - set(val_classes))}, "
                f"only in val: {sorted(set(val_classes) - set(classes))}"
            )
    else:
        classes, samples = scan_image_folder(root / "train" if (root / "train").is_dir() else root)
        train_idx, val_idx = stratified_split(torch.tensor([label for _, label in samples]), val_fraction, seed)
        train_samples, val_samples = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    return ImageFiles(train_samples, train_tf), ImageFiles(val_samples, val_tf), tuple(classes)
