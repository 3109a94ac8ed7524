"""Which modules of a model become quadratic: name globs, filtered by module type.

Defaults follow QuadraNet: the spatial (depthwise) convs of each block for CNNs, where a
quadratic term widens the receptive field at little cost, and the first MLP linear of
each transformer block.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Sequence

from torch import nn

from qdeploy.errors import QDeployError

SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

# Keyed by timm model class name. Globs use fnmatch: '*' also crosses dots.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "EfficientNet": ("blocks.*.conv_dw",),
    "MobileNetV3": ("blocks.*.conv_dw",),
    "ResNet": ("layer*.conv2",),
    "ConvNeXt": ("stages.*.blocks.*.conv_dw", "stages.*.blocks.*.mlp.fc1"),
    "VisionTransformer": ("blocks.*.mlp.fc1",),
}


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The family's defaults; unknown families get every spatial conv and every MLP fc1."""
    family = type(model).__name__
    if family in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[family]
    spatial = [name for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 and name]
    mlp = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.endswith("mlp.fc1")]
    if not spatial and not mlp:
        raise QDeployError(
            f"no default quadratic targets for {family}: pass targets as module-name globs, "
            "e.g. targets=['features.*.conv']"
        )
    return tuple(spatial + mlp)


def resolve_targets(model: nn.Module, targets: Sequence[str] | None,
                    types: tuple[type[nn.Module], ...] = SUPPORTED_TYPES) -> list[str]:
    """Module names matching any glob and of a supported type, in model order.

    Every glob must match at least one module, so a typo fails loudly instead of silently
    adapting nothing.
    """
    globs = tuple(targets) if targets else default_targets(model)
    candidates = [name for name, module in model.named_modules() if name and isinstance(module, types)]
    for glob in globs:
        if not any(fnmatchcase(name, glob) for name in candidates):
            examples = ", ".join(candidates[:4])
            raise QDeployError(
                f"target {glob!r} matches no {'/'.join(t.__name__ for t in types)} module; "
                f"module names look like: {examples}"
            )
    return [name for name in candidates if any(fnmatchcase(name, glob) for glob in globs)]
