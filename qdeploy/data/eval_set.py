"""Real labelled images for parity checks: the built-in digits-shift val split or an ImageFolder.

Random inputs find numeric differences; only real images show whether they change answers
(top-1 agreement, accuracy). The images are normalised with the model's own mean/std and
brought to the size the engine takes, through the same dataset code training uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

from qdeploy.errors import QDeployError


@dataclass
class EvalSet:
    name: str
    images: np.ndarray  # (N, C, H, W) float32, normalised
    labels: np.ndarray  # (N,) int64

    def batches(self, size: int):
        for start in range(0, len(self.labels), size):
            yield self.images[start:start + size], self.labels[start:start + size]


def load_eval_set(spec: str, model: nn.Module, image_size: tuple[int, int], limit: int | None = None,
                  **split: Any) -> EvalSet:
    """The val split of `spec` ("digits-shift" or an ImageFolder path), at most `limit` images.

    split: the `seed` and `val_fraction` the model was trained with (TrainingRecord.split_for),
    so that a model is scored on the images it was not trained on; the defaults otherwise.
    """
    from qdeploy.data.image_folder import collate_skipping_bad
    from qdeploy.data.splits import capped, labelled_splits

    height, width = image_size
    if height != width:
        raise QDeployError(f"{spec} images are evaluated square; the engine takes {height}x{width}")
    _, val, _ = labelled_splits(spec, model, height, **split)
    images, labels = [], []
    for batch, target, _ in DataLoader(capped(val, limit, split.get("seed", 0)), batch_size=64,
                                       collate_fn=collate_skipping_bad):
        if batch is not None:
            images.append(batch.numpy().astype(np.float32))
            labels.append(target.numpy())
    if not images:
        raise QDeployError(f"no image of {spec} could be decoded; check the files named in the warnings")
    return EvalSet(spec, np.concatenate(images), np.concatenate(labels).astype(np.int64))

