"""The training data: the built-in shifted digits and the ImageFolder splits."""

from __future__ import annotations

import pytest
import torch

from qdeploy.data.digits_shift import CLASSES, digits_images, digits_shift_datasets
from qdeploy.data.image_folder import image_folder_datasets, stratified_split
from qdeploy.errors import QDeployError
from tests.train_helpers import write_image_folder


def test_digits_shift_is_real_seeded_and_shifted() -> None:
    clean, labels = digits_images(16, shift="none")
    shifted, same_labels = digits_images(16, seed=0)
    assert clean.shape == shifted.shape == (1797, 1, 16, 16) and torch.equal(labels, same_labels)
    assert labels.bincount().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # load_digits()
    assert 0.0 <= shifted.min() and shifted.max() <= 1.0
    # Contrast inversion: the scans' dark background becomes light paper.
    assert clean[:, :, 0, 0].mean() < 0.05 and shifted[:, :, 0, 0].mean() > 0.95
    assert torch.equal(shifted, digits_images(16, seed=0)[0])
    assert not torch.allclose(shifted, digits_images(16, seed=1)[0])  # warp and gamma are drawn from the seed
    with pytest.raises(QDeployError, match="unknown digits shift"):
        digits_images(16, shift="blur")


def test_digits_datasets_are_normalised_and_split_by_class() -> None:
    train, val, classes = digits_shift_datasets((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), size=16, val_fraction=0.2)
    assert classes == CLASSES and len(train) + len(val) == 1797 and len(val) == pytest.approx(360, abs=5)
    image, label = val[0]
    assert image.shape == (3, 16, 16) and image.min() >= -2.0 and image.max() <= 2.0
    val_counts = torch.tensor([val[i][1] for i in range(len(val))]).bincount()
    assert val_counts.min() >= 34 and val_counts.max() <= 37  # every class ~20% held out


def test_stratified_split_and_explicit_val_folder(tmp_path) -> None:
    labels = torch.tensor([0] * 10 + [1] * 5)
    train_idx, val_idx = stratified_split(labels, 0.2, seed=0)
    assert sorted(train_idx + val_idx) == list(range(15)) and labels[val_idx].tolist() == [0, 0, 1]
    with pytest.raises(QDeployError, match="too few to hold out"):
        stratified_split(torch.tensor([0, 0, 1]), 0.5, seed=0)

    write_image_folder(tmp_path / "train", classes=("circle", "square"), per_class=3)
    write_image_folder(tmp_path / "val", classes=("circle", "square"), per_class=2)
    train, val, classes = image_folder_datasets(tmp_path, 20, (0.5,) * 3, (0.5,) * 3)
    assert classes == ("circle", "square") and (len(train), len(val)) == (6, 4)
    assert val[0][0].shape == (3, 20, 20)
