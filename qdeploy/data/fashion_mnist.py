"""Fashion-MNIST from the IDX files Debian's `dataset-fashion-mnist` package installs.

Why this set: a second real dataset that needs no download on a machine with the package
(`apt-get install dataset-fashion-mnist` puts Zalando's original files in
/usr/share/datasets/fashion-mnist/): 60,000 train and 10,000 test 28x28 grey photos of
clothing in 10 classes, harder than digits (similar shirt/pullover/coat silhouettes).

Spec: `fashion-mnist` (the Debian folder) or `fashion-mnist:DIR` (any folder with the four
files, gzipped as distributed or not). The official split is kept: train is the 60,000,
val the 10,000 test images (`--val-fraction` does not apply). Images are stored as uint8
28x28 and resized on access (NormalizedImages).

IDX format (LeCun's MNIST page): a big-endian header, magic `0x00000803` for a uint8 image
array (then count, rows, cols) or `0x00000801` for a uint8 label vector (then count),
followed by the raw bytes. Anything else is a corrupt-file error naming the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from qdeploy.data.in_memory import NormalizedImages
from qdeploy.errors import QDeployError

SPEC = "fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
DEFAULT_SIZE = 32  # 28 px photos: EfficientNet's stride-32 backbone then ends on a 1x1 map
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def is_fashion_mnist(spec: str) -> bool:
    return spec == SPEC or spec.startswith(SPEC + ":")


def data_dir(spec: str) -> Path:
    """The folder a `fashion-mnist[:DIR]` spec names."""
    return Path(spec.split(":", 1)[1]) if ":" in spec else DEFAULT_DIR


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise QDeployError(
        f"Fashion-MNIST file {stem}.gz is missing from {folder}; install the apt package {APT_PACKAGE} "
        f"(files in {DEFAULT_DIR}) or pass --data {SPEC}:DIR with the four IDX files"
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """A uint8 IDX array (images: (N, rows, cols); labels: (N,)), with its header checked."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise QDeployError(f"{path} is corrupt ({exc}); reinstall {APT_PACKAGE} or replace the file") from None
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        found = f"{struct.unpack('>I', raw[:4])[0]:#x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise QDeployError(f"{path} is corrupt: not an IDX file of magic {magic:#x} (found {found}); "
                           f"reinstall {APT_PACKAGE} or replace the file")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise QDeployError(f"{path} is corrupt: its header promises {'x'.join(map(str, shape))} = {expected} bytes of "
                           f"data, the file holds {len(raw) - header}; reinstall {APT_PACKAGE} or replace the file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) uint8, labels (N,) int64) of the `train` or `val` (test) files."""
    images_stem, labels_stem = FILES[split]
    images = read_idx(_find(folder, images_stem), IMAGES_MAGIC)
    labels_path = _find(folder, labels_stem)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise QDeployError(f"{folder}: {images_stem} holds {len(images)} images but {labels_stem} "
                           f"{len(labels)} labels; reinstall {APT_PACKAGE} or replace the files")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise QDeployError(f"{labels_path} is corrupt: label {int(labels.max())} is not one of the "
                           f"{len(CLASSES)} classes 0-{len(CLASSES) - 1}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def fashion_mnist_datasets(spec: str, mean: tuple[float, ...], std: tuple[float, ...],
                           size: int = DEFAULT_SIZE) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """Train (60,000) and val (the 10,000 test images) sets at `size` px, normalised for a model."""
    folder = data_dir(spec)
    if not folder.is_dir():
        raise QDeployError(f"Fashion-MNIST folder {folder} does not exist; install the apt package {APT_PACKAGE} "
                           f"(files in {DEFAULT_DIR}) or pass --data {SPEC}:DIR with the four IDX files")
    train = NormalizedImages(*load_split(folder, "train"), mean, std, size=size)
    val = NormalizedImages(*load_split(folder, "val"), mean, std, size=size)
    return train, val, CLASSES
