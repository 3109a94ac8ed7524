"""Registry of CLI sub-commands: one module per stage, imported only when its command runs.

The stages import torch, timm, ONNX or uvicorn at module level; loading just the module a
command needs keeps `qdeploy serve` or `qdeploy plugins path` from paying for the others.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "pipeline": "qdeploy.commands.pipeline:pipeline",
    "demo": "qdeploy.commands.demo:demo",
    "train": "qdeploy.commands.train:train",
    "export": "qdeploy.commands.export:export",
    "verify": "qdeploy.commands.verify:verify_command",
    "bench": "qdeploy.commands.bench:bench",
    "build": "qdeploy.commands.build:build",
    "plugins": "qdeploy.commands.plugins:plugins",
    "serve": "qdeploy.commands.serve:serve",
    "triton-repo": "qdeploy.commands.serve:triton_repo",
    "lr-probe": "qdeploy.commands.nqm:lr_probe",
    "catapult": "qdeploy.commands.nqm:catapult",
}


def load_command(name: str) -> click.Command | None:
    """Import the module that defines `name` and return its click command (None if unknown)."""
    target = COMMANDS.get(name)
    if target is None:
        return None
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)
