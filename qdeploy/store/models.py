"""Model folders as PyTorch models: build one bit-exactly from its folder, and write one.

Nothing is unpickled: the JSON names the architecture (BaseSpec), the quadratic settings
and the wrapped module names (or the LoRA settings), safetensors holds every tensor.
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
from qdeploy.store.artifacts import TrainingRecord
from qdeploy.store.layout import (ADAPTER_FILE, ADAPTER_FORMAT, BASE_FILE, BASE_FORMAT, TRAINING_KEY, WEIGHTS_FILE,
                                  Stored, locate, model_config)


def inject_lora(model: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """Wrap the named layers with PEFT LoRA layers (zero-started lora_B), in place; the settings
    ride on the model as `qdeploy_lora`, which `save` records under base.json's "lora"."""
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(**settings), model)
    model.qdeploy_lora = settings
    return model


def build_model(folder: Path, weights: Path | None, map_location: str | torch.device) -> nn.Module:
    """Rebuild the model a folder describes and load its weights (bit-exact; nothing unpickled)."""
    config = model_config(folder)
    weights = weights or folder / WEIGHTS_FILE
    if not weights.is_file():
        raise QDeployError(f"{folder} has its config but no {WEIGHTS_FILE}: the model folder is incomplete; "
                           "save the model again")
    spec = BaseSpec.from_dict(config["base"])
    model = build_architecture(spec)
    model.qdeploy_base = spec
    if config["format"] == ADAPTER_FORMAT:
        adapt(model, targets=config["targets"], config=QuadConfig.from_dict(config["quad"]), count_model_flops=False)
    elif "lora" in config:
        model = inject_lora(model, config["lora"])
    load_state_checked(model, read_state_dict(weights), str(weights))
    return model.to(map_location).eval()


def config_of(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(file name, JSON document) that, with the weights, rebuilds `model`: adapter.json for
    quadratic models (base spec, quadratic settings, wrapped module names), else base.json."""
    config: dict[str, Any] = {"qdeploy_version": __version__, "base": base_spec_of(model).to_dict()}
    if quadratic_layers(model):
        config.update(format=ADAPTER_FORMAT, quad=adapter_config(model).to_dict(), targets=list(quadratic_layers(model)))
        return ADAPTER_FILE, config
    config["format"] = BASE_FORMAT
    if hasattr(model, "qdeploy_lora"):
        config["lora"] = model.qdeploy_lora
    return BASE_FILE, config


def model_files(model: nn.Module, extra: dict[str, Any] | None = None) -> dict[str, bytes]:
    """File name -> contents of a model folder (weights + config with `extra` keys)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    name, config = config_of(model)
    config.update(extra or {})
    return {WEIGHTS_FILE: safetensors_bytes(state), name: json.dumps(config, indent=2, sort_keys=True).encode()}


def write_folder(folder: str | Path, files: dict[str, bytes]) -> Path:
    """Replace `folder` by exactly `files`, atomically: a failed write leaves the previous folder."""
    with atomic.staged_directory(folder) as stage:
        for name, data in files.items():
            (stage / name).write_bytes(data)
    return Path(folder)


def save(model: nn.Module, folder: str | Path, record: TrainingRecord | None = None) -> Path:
    """Write `model` as a model folder (replaced atomically); `record`: how it was trained."""
    return write_folder(folder, model_files(model, {TRAINING_KEY: record.to_json()} if record else None))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Stored:
    """`locate(path)`, with the PyTorch model built when `path` is a model (else built on `.build()`)."""
    stored = locate(path)
    if stored.kind == "model":
        stored.build(map_location)
    return stored


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The PyTorch model at (or behind) `path`, in eval mode."""
    return locate(path).build(map_location)
