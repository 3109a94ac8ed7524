"""Resumable checkpoints on disk: safetensors for tensors, JSON for the rest.

Nothing is pickled, so loading a run folder never executes code. Every folder is written
through `atomic.staged_directory` (store.write_folder): a crash mid-write leaves the previous
checkpoint whole.

    <checkpoint folder>/  a model folder (qdeploy.store: model.safetensors + adapter.json or
                          base.json), plus
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

from qdeploy import __version__
from qdeploy.errors import QDeployError
from qdeploy.store import load_model, model_files, write_folder

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
CHECKPOINT_FORMAT = "qdeploy-train-checkpoint/1"


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
    files[STATE_FILE] = json.dumps({"format": CHECKPOINT_FORMAT, "qdeploy_version": __version__,
                                     "optimizer": optimizer_meta, **state}, indent=2, sort_keys=True).encode()
    return write_folder(folder, files)


@dataclass
class Checkpoint:
    """A checkpoint read back: the JSON state, the optimizer state_dict and the RNG states."""

    folder: Path
    state: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng_states: dict[str, torch.Tensor]

    def load_model(self) -> nn.Module:
        return load_model(self.folder)


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
