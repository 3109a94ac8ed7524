"""The unadapted base model of an adapted one, in PyTorch and as ONNX, for overhead ratios.

The quadratic overhead is only a number when the same weights without the quadratic terms
run on the same backend beside the adapted model. `qdeploy export` refuses plain models
(it exports quadratic layers), so the base ONNX file is written here with torch.onnx's
standard exporter, with the same input/output names and dynamic batch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from qdeploy import atomic
from qdeploy.adaptation import quadratic_layers, unadapt
from qdeploy.errors import QDeployError, first_line
from qdeploy.runtime.torch_engine import INPUT_NAME, OUTPUT_NAME


def base_of(model: nn.Module) -> nn.Module:
    """A copy of `model` with every quadratic layer replaced by its primary (`model` is untouched)."""
    if not quadratic_layers(model):
        raise QDeployError("the model has no quadratic layers, so it has no separate base model")
    return unadapt(copy.deepcopy(model)).eval()


def export_plain_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """`model` (no custom ops) as an ONNX file with a dynamic batch, written atomically."""
    example = torch.randn(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.onnx.export(model.eval(), (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), dynamo=True, optimize=True, verbose=False)
    except Exception as exc:
        raise QDeployError(f"torch.onnx cannot export the base model ({first_line(exc)})") from exc
    atomic.write_bytes(path, program.model_proto.SerializeToString())
    return Path(path)
