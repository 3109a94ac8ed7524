"""The model each mode trains, and which of its weights train.

    adapt     pretrained weights + zero-started quadratic terms; trains the quadratic terms
              and the classifier head (the primary too with `train_primary`)
    scratch   the same quadratic architecture from random weights, everything trains
    finetune  the pretrained model as is, everything trains (no quadratic term)
    lora      the pretrained model + PEFT LoRA at the quadratic adapter's parameter count;
              trains the LoRA weights and the head (lora.py)

`--model` is the built-in name, a timm name (with `--checkpoint` for local weights), or a
folder `qdeploy train` wrote (the run or its model/ folder): training continues from those weights.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from qdeploy.adaptation import AdaptReport, adapt, freeze_primary, quadratic_layers
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import base_spec_of, load_base_model
from qdeploy.store import load_model
from qdeploy.training.config import TrainConfig
from qdeploy.training.data import DataBundle, build_data
from qdeploy.training.lora import LoraPlan, apply_lora, mark_trainable


def load_source(config: TrainConfig) -> nn.Module:
    """The starting weights named by --model / --checkpoint, before any head or adapter change."""
    path = Path(config.model)
    if path.is_dir():
        if config.mode == "scratch":
            raise QDeployError(f"--mode scratch starts from random weights; --model {path} is a trained folder")
        if config.checkpoint:
            raise QDeployError(f"--model {path} is a trained folder with its own weights; drop --checkpoint")
        model = load_model(path)
        if config.mode in ("finetune", "lora") and quadratic_layers(model):
            raise QDeployError(f"--mode {config.mode} trains a plain model, but {path} is quadratic; use --mode adapt")
        return model
    if path.is_file():
        raise QDeployError(
            f"--model {path} is a file; name the architecture and pass the weights separately: "
            f"--model <timm name> --checkpoint {path}"
        )
    return load_base_model(config.model, checkpoint=config.checkpoint, pretrained=config.mode != "scratch")


def fit_head(model: nn.Module, num_classes: int) -> None:
    """Re-initialise the classifier when the data has another class count."""
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)
        model.qdeploy_base = replace(base_spec_of(model), num_classes=num_classes)


def fit_head_to_data(model: nn.Module, config: TrainConfig) -> DataBundle:
    """`config.data` built for `model`, whose head is refitted (in place) to its classes, seeded by
    `config.seed`: the head the plan's zero-start scorer, its trials and its ablation score all start from."""
    bundle = build_data(config, model)
    torch.manual_seed(config.seed)
    fit_head(model, len(bundle.classes))
    return bundle


def set_trainable(model: nn.Module, config: TrainConfig) -> None:
    """adapt: quadratic terms + head (+ primary with train_primary); lora: LoRA weights + head;
    other modes: everything."""
    if config.mode == "lora":
        mark_trainable(model)
    elif config.mode == "adapt" and not config.train_primary:
        freeze_primary(model)
        for param in model.get_classifier().parameters():
            param.requires_grad_(True)
    else:
        for param in model.parameters():
            param.requires_grad_(True)


def prepare_model(model: nn.Module, config: TrainConfig, num_classes: int,
                  image_size: int) -> tuple[nn.Module, AdaptReport | LoraPlan | None]:
    """`model` (from load_source) with a head of `num_classes`, adapted (or given LoRA layers)
    if the mode needs it and not already, and its trainable set; returns the adapt report (or
    the LoRA plan) when it changed the model now."""
    fit_head(model, num_classes)
    report = None
    quad = QuadConfig(rank=config.rank, depthwise_rank=config.depthwise_rank, dilation=config.dilation)
    if config.quadratic and not quadratic_layers(model):
        model, report = adapt(model, config.targets, config=quad, input_size=(3, image_size, image_size))
    elif config.mode == "lora" and not hasattr(model, "qdeploy_lora"):
        model, report = apply_lora(model, quad, image_size)
    set_trainable(model, config)
    return model, report
