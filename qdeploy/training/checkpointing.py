"""Trained models and resumable checkpoints on disk: safetensors for tensors, JSON for the rest.

Nothing is pickled, so loading a run folder never executes code. Every folder is written
through `atomic.staged_directory`: a crash mid-write leaves the previous checkpoint whole.

    <model folder>/       model.safetensors + adapter.json   (quadratic: `load_adapted` reads it)
                          model.safetensors + base.json      (finetune: a plain timm model;
                                                              lora: plus its PEFT settings under "lora")
    <checkpoint folder>/  the model files above, plus
                          optimizer.safetensors  optimizer tensors ("optim.<param>.<key>") and
                                                 per-rank RNG states ("rng.<rank>.<device>")
                          train_state.json       config, counters, optimizer scalars
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch import nn

from qdeploy import __version__, atomic
from qdeploy.adaptation import load_adapted, quadratic_layers
from qdeploy.adaptation.checkpoint import CONFIG_FILE, WEIGHTS_FILE, adapted_config
from qdeploy.errors import QDeployError
from qdeploy.models.sources import BaseSpec, base_spec_of, build_architecture, load_state_checked, read_state_dict
from qdeploy.training.lora import inject as inject_lora

BASE_CONFIG_FILE = "base.json"
BASE_FORMAT = "qdeploy-base/1"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
CHECKPOINT_FORMAT = "qdeploy-train-checkpoint/1"


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode("utf-8")


def model_files(model: nn.Module, extra: dict[str, Any] | None = None) -> dict[str, bytes]:
    """File name -> contents for a trained model: adapted models in the foundation's format."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if quadratic_layers(model):
        name, config = CONFIG_FILE, adapted_config(model)
    else:
        name = BASE_CONFIG_FILE
        config = {"format": BASE_FORMAT, "qdeploy_version": __version__, "base": base_spec_of(model).to_dict()}
        if hasattr(model, "qdeploy_lora"):
            config["lora"] = model.qdeploy_lora
    return {WEIGHTS_FILE: safetensors_bytes(state), name: _json_bytes({**config, **(extra or {})})}


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    with atomic.staged_directory(folder) as stage:
        for name, data in files.items():
            (stage / name).write_bytes(data)
    return folder


def save_trained(model: nn.Module, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the trained model alone (the run's deliverable), replacing `folder` atomically."""
    return _write(Path(folder), model_files(model, extra))


def load_trained(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model that `save_trained` or a checkpoint wrote, in eval mode."""
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        return load_adapted(folder, map_location)
    config_path = folder / BASE_CONFIG_FILE
    if not config_path.is_file():
        raise QDeployError(
            f"{folder} holds no trained model ({CONFIG_FILE} or {BASE_CONFIG_FILE}); pass a folder "
            "written by `qdeploy train` (its model/ or checkpoint/ folder)"
        )
    config = json.loads(config_path.read_text())
    if config.get("format") != BASE_FORMAT:
        raise QDeployError(f"{config_path} has format {config.get('format')!r}, expected {BASE_FORMAT!r}")
    spec = BaseSpec.from_dict(config["base"])
    model = build_architecture(spec)
    model.qdeploy_base = spec
    if "lora" in config:
        model = inject_lora(model, config["lora"])
    weights = folder / WEIGHTS_FILE
    load_state_checked(model, read_state_dict(weights), str(weights))
    return model.to(map_location).eval()


def _optimizer_split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as (tensors for safetensors, everything else for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(values) for i, values in meta["scalars"].items()}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    rng_states: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Everything `--resume` needs, as one atomically replaced folder."""
    tensors, optimizer_meta = _optimizer_split(optimizer.state_dict())
    tensors.update({f"rng.{name}": value.contiguous().cpu() for name, value in rng_states.items()})
    files = model_files(model)
    files[OPTIMIZER_FILE] = safetensors_bytes(tensors)
    files[STATE_FILE] = _json_bytes({"format": CHECKPOINT_FORMAT, "qdeploy_version": __version__,
                                     "optimizer": optimizer_meta, **state})
    return _write(folder, files)


@dataclass
class Checkpoint:
    """A checkpoint read back: the JSON state, the optimizer state_dict and the RNG states."""

    folder: Path
    state: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng_states: dict[str, torch.Tensor]

    def load_model(self) -> nn.Module:
        return load_trained(self.folder)


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON state (config, step, ...) without reading the optimizer tensors."""
    state_path = Path(folder) / STATE_FILE
    if not state_path.is_file():
        raise QDeployError(
            f"nothing to resume: {state_path} does not exist (a run writes its first checkpoint at the "
            "first epoch end or --save-every steps); drop --resume to start a new run"
        )
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as exc:
        raise QDeployError(f"checkpoint {folder} is unreadable ({exc}); it was not written by qdeploy train") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise QDeployError(f"{state_path} has format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    return state


def read_checkpoint(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    state = read_checkpoint_state(folder)
    try:
        tensors = safetensors_load((folder / OPTIMIZER_FILE).read_bytes())
    except Exception as exc:  # OSError, SafetensorError on a damaged file
        raise QDeployError(f"checkpoint {folder} is unreadable ({exc}); it was not written by qdeploy train") from exc
    rng = {name.removeprefix("rng."): value for name, value in tensors.items() if name.startswith("rng.")}
    return Checkpoint(folder, state, _optimizer_join(tensors, state.pop("optimizer")), rng)
