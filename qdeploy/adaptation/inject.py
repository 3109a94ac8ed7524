"""adapt() / unadapt(): swap chosen layers for quadratic ones in place, and back (PEFT-style).

Wrappers keep the pretrained module as `<name>.primary`, so its weights keep their values;
state-dict names of the adapted model are the base names with `.primary` inserted.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from qdeploy.adaptation.report import AdaptReport, count_flops
from qdeploy.model_io import model_input_size
from qdeploy.adaptation.targets import SUPPORTED_TYPES, resolve_targets
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig, QuadraticLayer, quadratic_layer


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quadratic_layers(model: nn.Module) -> dict[str, QuadraticLayer]:
    """Every quadratic layer of a model by module name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuadraticLayer)}


def adapter_config(model: nn.Module) -> QuadConfig:
    """The one QuadConfig an adapted model was built with."""
    layers = quadratic_layers(model)
    if not layers:
        raise QDeployError("the model has no quadratic layers; adapt() it first")
    return next(iter(layers.values())).config


def freeze_primary(model: nn.Module) -> None:
    """Train only the quadratic terms: every other parameter stops requiring grad."""
    quad_params = {id(p) for layer in quadratic_layers(model).values() for p in layer.quad.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in quad_params)


def randomize_quadratic_terms(model: nn.Module, std: float = 0.05) -> nn.Module:
    """Draw every quadratic parameter from N(0, std), in place: a stand-in for trained terms.

    Zero-started terms compute nothing, so timing, export and parity checks of a fresh
    adaptation would not exercise them; benchmarks and tests use this instead of a run.
    """
    with torch.no_grad():
        for layer in quadratic_layers(model).values():
            for param in layer.quad.parameters():
                param.normal_(0.0, std)
    return model


def adapt(model: nn.Module, targets: Sequence[str] | None = None, config: QuadConfig | None = None,
          freeze: bool = True, types: tuple[type[nn.Module], ...] = SUPPORTED_TYPES,
          input_size: tuple[int, int, int] | None = None,
          count_model_flops: bool = True) -> tuple[nn.Module, AdaptReport]:
    """Make the modules matched by `targets` quadratic, in place; returns (model, report).

    targets: module-name globs (fnmatch); None picks the family's defaults (targets.py).
    freeze: keep the pretrained weights fixed and train only the quadratic terms.
    input_size: (C, H, W) for the FLOPs count; defaults to the model's own input size.
    The adapted model's output equals the original's bit for bit until the terms train.
    """
    config = config or QuadConfig()
    if quadratic_layers(model):
        raise QDeployError("the model is already adapted; unadapt() it before adapting again")
    names = resolve_targets(model, targets, types)
    base_params = sum(p.numel() for p in model.parameters())
    size = None
    if count_model_flops:
        size = tuple(input_size) if input_size else model_input_size(model)
        base_flops = count_flops(model, size)
    for name in names:
        _set_submodule(model, name, quadratic_layer(model.get_submodule(name), config))
    if freeze:
        freeze_primary(model)
    total = sum(p.numel() for p in model.parameters())
    report = AdaptReport(
        layers=names,
        base_params=base_params,
        added_params=total - base_params,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        input_size=size,
        base_flops=base_flops if count_model_flops else None,
        added_flops=count_flops(model, size) - base_flops if count_model_flops else None,
    )
    return model, report


def unadapt(model: nn.Module) -> nn.Module:
    """Put every primary back in place of its quadratic wrapper and make all weights trainable."""
    for name, layer in quadratic_layers(model).items():
        _set_submodule(model, name, layer.primary)
    for param in model.parameters():
        param.requires_grad_(True)
    return model

