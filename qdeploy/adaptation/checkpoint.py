"""Save and load adapted models: `model.safetensors` plus `adapter.json`, rebuilt bit-exactly.

The JSON names the base architecture (BaseSpec), the quadratic settings and the exact
wrapped module names, so loading needs no pretrained download: build the architecture,
adapt the same modules, load every tensor from safetensors (no pickle anywhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from qdeploy import __version__, atomic
from qdeploy.adaptation.inject import adapt, adapter_config, quadratic_layers
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import BaseSpec, base_spec_of, build_architecture, load_state_checked, read_state_dict

FORMAT = "qdeploy-adapted/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "adapter.json"


def adapted_config(model: nn.Module) -> dict[str, Any]:
    """The JSON document that, with the weights, rebuilds `model`."""
    return {
        "format": FORMAT,
        "qdeploy_version": __version__,
        "base": base_spec_of(model).to_dict(),
        "quad": adapter_config(model).to_dict(),
        "targets": list(quadratic_layers(model)),
    }


def save_adapted(model: nn.Module, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the adapted model to `folder` atomically (the folder is replaced as a whole)."""
    config = {**adapted_config(model), **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic.staged_directory(folder) as stage:
        (stage / WEIGHTS_FILE).write_bytes(safetensors_bytes(state))
        (stage / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return Path(folder)


def read_adapted_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise QDeployError(f"{folder} is not an adapted-model folder (no {CONFIG_FILE}); pass the folder save_adapted wrote")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QDeployError(f"{path} is not valid JSON ({exc}); re-save the model") from exc
    if config.get("format") != FORMAT:
        raise QDeployError(f"{path} has format {config.get('format')!r}, expected {FORMAT!r}; re-save the model")
    return config


def load_adapted(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an adapted model from `folder`; its outputs equal the saved model's bit for bit."""
    folder = Path(folder)
    config = read_adapted_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise QDeployError(f"{folder} has no {WEIGHTS_FILE}; the adapted model is incomplete")
    spec = BaseSpec.from_dict(config["base"])
    model = build_architecture(spec)
    model.qdeploy_base = spec
    adapt(model, targets=config["targets"], config=QuadConfig.from_dict(config["quad"]), count_model_flops=False)
    load_state_checked(model, read_state_dict(weights), str(weights))
    return model.to(map_location).eval()
