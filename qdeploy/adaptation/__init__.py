"""Adaptation: turn a pretrained model into a quadratic one (config + layers + injection).

Saving and loading adapted models is the model store's (`qdeploy.store`).
"""

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
    "quadratic_layers",
    "randomize_quadratic_terms",
    "resolve_targets",
    "unadapt",
]
