"""Registry of CLI sub-commands: one module per stage, imported only when its command runs.

The stages import torch, timm, ONNX or uvicorn at module level; loading just the module a
command needs keeps `qdeploy serve` or `qdeploy plugins path` from paying for the others.
"""

from __future__ import annotations

import importlib

import click

# command name -> ("module:attribute", the one-line summary `qdeploy --help` lists without importing it)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("qdeploy.commands.pipeline:pipeline", "Train, export, verify and bench in one run (the main job)."),
    "demo": ("qdeploy.commands.demo:demo", "Adapt the built-in Lite0; check it equals the base at step 0."),
    "train": ("qdeploy.commands.train:train", "Train a quadratic network: adapt, scratch or finetune."),
    "plan": ("qdeploy.commands.plan:plan", "Choose the layers to adapt under a latency budget, by measurement."),
    "export": ("qdeploy.commands.export:export", "Export an adapted model to ONNX, decomposed and/or fused."),
    "verify": ("qdeploy.commands.verify:verify_command", "Compare a backend's outputs with the PyTorch model."),
    "bench": ("qdeploy.commands.bench:bench", "Measure latency and throughput of a model on a backend."),
    "build": ("qdeploy.commands.build:build", "Build a TensorRT plan from an exported ONNX file."),
    "plugins": ("qdeploy.commands.plugins:plugins", "Build or locate the TensorRT plugins for fused layers."),
    "serve": ("qdeploy.commands.serve:serve", "Serve a model repository: embedded KServe v2 server or real Triton."),
    "triton-repo": ("qdeploy.commands.serve:triton_repo", "Write a model into a Triton model repository."),
    "triton": ("qdeploy.commands.serve:triton", "Install NVIDIA's Triton Inference Server into a cache folder."),
    "lr-probe": ("qdeploy.commands.nqm:lr_probe", "Measure lambda0 and recommend a learning rate."),
    "catapult": ("qdeploy.commands.nqm:catapult", "Reproduce the catapult phase: network vs NQM vs linear."),
}


def load_command(name: str) -> click.Command | None:
    """Import the module that defines `name` and return its click command (None if unknown)."""
    if name not in COMMANDS:
        return None
    module, attribute = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), attribute)
