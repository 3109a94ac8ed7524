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


# The first linear of any MLP block: ViT's `mlp.fc1`, MLP-Mixer's `mlp_tokens.fc1` / `mlp_channels.fc1`.
MLP_FC1_GLOB = "*mlp*.fc1"


def is_patchify(module: nn.Module) -> bool:
    """A conv whose stride equals its kernel (> 1): a ViT/Mixer patch embedding, which cuts the
    image into patches; a quadratic term on it would mix pixels before any feature exists, and
    its atrous factors (dilation 3) overrun the patch."""
    return (isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1
            and tuple(module.stride) == tuple(module.kernel_size))


def candidate_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = SUPPORTED_TYPES) -> list[str]:
    """Every module the adapter can wrap (depthwise, regular and 1x1 convs, Linear), in model
    order, except the classifier head (every training mode retrains it, and `reset_classifier`
    would drop its wrapper) and patchify stems (is_patchify): where a latency plan may put terms."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return [name for name, m in model.named_modules()
            if name and isinstance(m, types) and m is not head and not is_patchify(m)]


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The family's defaults; unknown families get every spatial conv (patch embeddings left
    out) and the first linear of every MLP block."""
    family = type(model).__name__
    if family in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[family]
    spatial = [name for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 and name and not is_patchify(m)]
    mlp = [name for name, m in model.named_modules()
           if isinstance(m, nn.Linear) and fnmatchcase(name, MLP_FC1_GLOB)]
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
