"""Tiny Fashion-MNIST IDX files written by the tests (the real ones come from apt, not needed here)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: magic 0x803 for (N, rows, cols) uint8 images, 0x801 for (N,) labels."""
    magic = 0x803 if array.ndim == 3 else 0x801
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, train: int = 40, val: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """The four gzipped IDX files of a small Fashion-MNIST: class c is a bright band at row 2c."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in (("train", train), ("t10k", val)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 * label:2 * label + 6] = 250
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(idx_bytes(array)))
            arrays[f"{split}-{kind}"] = array
    return arrays
