"""Helpers the export tests share: adapted timm models with live quadratic terms, ORT parity, Polygraphy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from qdeploy.adaptation import adapt, quadratic_layers, randomize_quadratic_terms
from qdeploy.onnx_io import ort_session
from qdeploy.export.translations import plugin_nodes
from qdeploy.models.sources import load_base_model

FP32_TOLERANCE = 1e-4  # max |ort - torch| <= 1e-4 * max |torch|


def unsilence_residual_branches(model: torch.nn.Module) -> None:
    """Undo the init that mutes residual branches (a trained network has no such mute).

    timm zero-inits the last BatchNorm of each ResNet block and starts ConvNeXt's layer
    scale at 1e-6: left so, the quadratic terms in those branches barely reach the logits
    and a parity check would pass even if the exported terms were wrong.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and not module.weight.any():
                module.weight.fill_(1.0)
        for name, param in model.named_parameters():
            if name.endswith(".gamma"):  # timm's layer scale
                param.fill_(1.0)


def adapted(model: torch.nn.Module, **adapt_kwargs) -> torch.nn.Module:
    """`model` adapted (family defaults unless overridden) with non-zero quadratic weights."""
    torch.manual_seed(0)
    unsilence_residual_branches(model)
    adapt(model, count_model_flops=False, **adapt_kwargs)
    randomize_quadratic_terms(model)
    return model.eval()


def tiny_model(**adapt_kwargs) -> torch.nn.Module:
    """timm's 4-block test ResNet, adapted: the cheapest real export (a few seconds)."""
    return adapted(load_base_model("test_resnet", pretrained=False), **adapt_kwargs)


def run_onnx(path: Path, batch: torch.Tensor) -> np.ndarray:
    session = ort_session(path)
    return session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]


def assert_parity(path: Path, model: torch.nn.Module, batch: torch.Tensor, tolerance: float) -> None:
    with torch.no_grad():
        expected = model(batch).numpy()
    error = np.abs(run_onnx(path, batch) - expected).max()
    assert error <= tolerance * np.abs(expected).max(), (path.name, error, np.abs(expected).max())


def polygraphy_cli_runs(paths: list[Path], shape: tuple[int, ...]) -> None:
    """`polygraphy run <file> --onnxrt` succeeds on every file (run side by side: each is a new process)."""
    options = ["--onnxrt", "--input-shapes", f"input:[{','.join(map(str, shape))}]"]  # after the model path
    runs = [subprocess.Popen([shutil.which("polygraphy") or "polygraphy", "run", str(path), *options],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for path in paths]
    for path, run in zip(paths, runs):
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0 and "PASSED" in output, (path.name, output)


def asymmetric_same_pads(model: nn.Module, fused_path: Path, size: tuple[int, int, int]) -> int:
    """Check each plugin node's pads are its layer's TF-"same" pads at the export size; count uneven ones."""
    layers = quadratic_layers(model)
    input_hw: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module, args) -> None:  # returns None: a pre-hook's return value would replace the inputs
            input_hw[name] = tuple(args[0].shape[-2:])
        return hook

    hooks = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    with torch.no_grad():
        model(torch.zeros(1, *size))
    for hook in hooks:
        hook.remove()
    asymmetric = 0
    for node in plugin_nodes(onnx.load(fused_path)):
        top, bottom, left, right = layers[node.name].quad.a.explicit_pads(*input_hw[node.name])
        pads = next(list(a.ints) for a in node.attribute if a.name == "pads")
        assert pads == [top, left, bottom, right], node.name
        asymmetric += (top, left) != (bottom, right)
    return asymmetric
