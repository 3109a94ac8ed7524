"""Adaptation: turn a pretrained model into a quadratic one (config + layers + injection)."""

from qdeploy.adaptation.checkpoint import load_adapted, read_adapted_config, save_adapted
from qdeploy.adaptation.inject import (adapt, adapter_config, freeze_primary, quadratic_layers,
                                      randomize_quadratic_terms, unadapt)
from qdeploy.adaptation.report import AdaptReport
from qdeploy.adaptation.targets import DEFAULT_TARGETS, resolve_targets

__all__ = [
    "AdaptReport",
    "DEFAULT_TARGETS",
    "adapt",
    "adapter_config",
    "freeze_primary",
    "load_adapted",
    "quadratic_layers",
    "randomize_quadratic_terms",
    "read_adapted_config",
    "resolve_targets",
    "save_adapted",
    "unadapt",
]
