"""What `qdeploy export` reads: an adapted-model folder, or a weights file inside one.

A weights file other than the folder's own `model.safetensors` (say a training checkpoint
saved beside `adapter.json`) is loaded into the architecture the folder's adapter.json
describes, with the same strict key and shape checks as the folder's own weights.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from qdeploy.adaptation import adapt, load_adapted, read_adapted_config
from qdeploy.adaptation.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import BaseSpec, build_architecture, load_state_checked, read_state_dict


def load_source(path: str | Path) -> nn.Module:
    """The adapted model at `path` (folder or checkpoint file), in eval mode."""
    path = Path(path)
    if path.is_dir():
        return load_adapted(path)
    if not path.is_file():
        raise QDeployError(f"{path} does not exist; pass an adapted model folder (with {CONFIG_FILE}) or a checkpoint in one")
    if path.suffix == ".onnx":
        raise QDeployError(f"{path} is already an ONNX file; pass the adapted model folder it came from")
    if not (path.parent / CONFIG_FILE).is_file():
        raise QDeployError(f"checkpoint {path} has no {CONFIG_FILE} beside it; pass the adapted model folder instead")
    if path.name == WEIGHTS_FILE:
        return load_adapted(path.parent)
    config = read_adapted_config(path.parent)
    spec = BaseSpec.from_dict(config["base"])
    model = build_architecture(spec)
    model.qdeploy_base = spec
    adapt(model, targets=config["targets"], config=QuadConfig.from_dict(config["quad"]), count_model_flops=False)
    load_state_checked(model, read_state_dict(path), str(path))
    return model.eval()
