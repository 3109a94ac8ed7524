"""Fashion-MNIST from IDX files: shapes, labels, normalisation, and the errors for bad or missing files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from qdeploy.data.fashion_mnist import CLASSES, DEFAULT_SIZE, data_dir, read_idx
from qdeploy.data.splits import default_image_size, labelled_splits, model_mean_std
from qdeploy.errors import QDeployError
from qdeploy.models.sources import load_base_model
from tests.fashion_helpers import idx_bytes, write_fashion_mnist
from tests.train_helpers import TINY


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_base_model(TINY, pretrained=False)


def test_reads_images_and_labels_as_normalised_model_inputs(tmp_path, model) -> None:
    arrays = write_fashion_mnist(tmp_path / "fm", train=40, val=20)
    spec = f"fashion-mnist:{tmp_path / 'fm'}"
    assert default_image_size(spec, model) == DEFAULT_SIZE == 32
    train, val, classes = labelled_splits(spec, model, 28)
    assert classes == CLASSES and len(classes) == 10
    assert (len(train), len(val)) == (40, 20)  # the official split: t10k is the val set
    mean, std = model_mean_std(model)
    for dataset, prefix in ((train, "train"), (val, "t10k")):
        for index in (0, 7, len(dataset) - 1):
            image, label = dataset[index]
            assert label == arrays[f"{prefix}-labels-idx1"][index]
            assert image.shape == (3, 28, 28)
            grey = arrays[f"{prefix}-images-idx3"][index] / 255.0  # at 28 px the pixels are served as stored
            expected = (torch.tensor(grey, dtype=torch.float32) - mean[1]) / std[1]
            torch.testing.assert_close(image[1], expected)
    resized, _ = labelled_splits(spec, model, 64)[0][3]
    assert resized.shape == (3, 64, 64)


def test_uncompressed_files_are_read_too(tmp_path) -> None:
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels", 0x801), labels)


def test_corrupt_files_are_one_line_errors_naming_the_file(tmp_path, model) -> None:
    folder = tmp_path / "fm"
    write_fashion_mnist(folder)
    spec = f"fashion-mnist:{folder}"
    images = folder / "train-images-idx3-ubyte.gz"
    good = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(good[:-100]))  # truncated data
    with pytest.raises(QDeployError, match=r"train-images-idx3-ubyte.gz is corrupt: its header promises "
                                           r"40x28x28 = 31360 bytes of data, the file holds 31260"):
        labelled_splits(spec, model, 32)
    images.write_bytes(good[:5000])  # not gzip at all
    with pytest.raises(QDeployError, match=r"train-images-idx3-ubyte.gz is corrupt \(.*gzip"):
        labelled_splits(spec, model, 32)
    images.write_bytes(gzip.compress(idx_bytes(np.zeros(40, np.uint8))))  # a label file in its place
    with pytest.raises(QDeployError, match=r"not an IDX file of magic 0x803 \(found 0x801\)"):
        labelled_splits(spec, model, 32)
    write_fashion_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(20, 12, np.uint8))))
    with pytest.raises(QDeployError, match=r"label 12 is not one of the 10 classes"):
        labelled_splits(spec, model, 32)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(19, np.uint8))))
    with pytest.raises(QDeployError, match=r"holds 20 images but t10k-labels-idx1-ubyte 19 labels"):
        labelled_splits(spec, model, 32)


def test_missing_files_name_the_apt_package(tmp_path, model) -> None:
    assert str(data_dir("fashion-mnist")) == "/usr/share/datasets/fashion-mnist"
    with pytest.raises(QDeployError, match=r"does not exist; install the apt package dataset-fashion-mnist"):
        labelled_splits(f"fashion-mnist:{tmp_path / 'absent'}", model, 32)
    folder = tmp_path / "fm"
    write_fashion_mnist(folder)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(QDeployError, match=r"t10k-images-idx3-ubyte.gz is missing from .*apt package "
                                           r"dataset-fashion-mnist"):
        labelled_splits(f"fashion-mnist:{folder}", model, 32)
