"""The tiny adapted model the runtime tests export (conftest.py's `tiny_export` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qdeploy.adaptation import adapt, randomize_quadratic_terms
from qdeploy.models.sources import load_base_model

INPUT_SIZE = (32, 32)


@dataclass
class TinyExport:
    model: torch.nn.Module  # adapted, eval mode
    folder: Path  # qdeploy.store.save folder (the reference)
    onnx: Path  # export folder: decomposed.onnx, fused.onnx, export_report.json


def tiny_adapted() -> torch.nn.Module:
    """timm's 4-block test ResNet, adapted, with random quadratic terms and BatchNorm scales.

    timm zero-initialises each block's last BatchNorm scale, which would hide any change
    inside a residual branch; random scales make every layer matter to the output.
    """
    torch.manual_seed(0)
    model = load_base_model("test_resnet", pretrained=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    adapt(model, count_model_flops=False)
    randomize_quadratic_terms(model)
    return model.eval()
