"""The unadapted base model of an adapted one, in PyTorch and as ONNX, for overhead ratios.

The quadratic overhead is only a number when the same weights without the quadratic terms
run on the same backend beside the adapted model. `qdeploy export` refuses plain models
(it exports quadratic layers), so the base ONNX file is written here, through the
exporter's own conversion and writer: same input/output names, dynamic batch and
external-data rule (weights past 2 GB go to `<name>.data`).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from qdeploy.adaptation import quadratic_layers, unadapt
from qdeploy.errors import QDeployError
from qdeploy.export.onnx_export import save_onnx, to_onnx
from qdeploy.onnx_io import random_batch


def base_of(model: nn.Module) -> nn.Module:
    """A copy of `model` with every quadratic layer replaced by its primary (`model` is untouched)."""
    if not quadratic_layers(model):
        raise QDeployError("the model has no quadratic layers, so it has no separate base model")
    return unadapt(copy.deepcopy(model)).eval()


def export_plain_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """`model` (no quadratic layers) as an ONNX file with a dynamic batch.

    Written in a hidden staging folder beside `path` and moved in weights first, graph last,
    so an interrupted export never leaves a readable but incomplete `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_model = to_onnx(model.eval(), torch.from_numpy(random_batch(input_shape, 2, seed=0)), dynamic_batch=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as stage:
        save_onnx(onnx_model, Path(stage) / path.name)
        for staged in sorted(Path(stage).iterdir(), key=lambda file: file.name == path.name):
            os.replace(staged, path.parent / staged.name)
    return path
