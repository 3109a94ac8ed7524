"""A tiny adapted model, saved and exported once per test session, for the runtime tests.

A fixture imported into several test modules is a separate fixture in each, so the export
itself is cached here, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from qdeploy.adaptation import adapt, randomize_quadratic_terms
from qdeploy.store import save
from qdeploy.export import ExportOptions, export_model
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


_BUILT: list[TinyExport] = []


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> TinyExport:
    if not _BUILT:
        root = tmp_path_factory.mktemp("runtime")
        model = tiny_adapted()
        folder = save(model, root / "adapted")
        out = root / "onnx"
        export_model(model, out, ExportOptions(input_size=INPUT_SIZE, source=str(folder)))
        _BUILT.append(TinyExport(model, folder, out))
    return _BUILT[0]
