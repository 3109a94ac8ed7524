"""Where pretrained base models come from: the built-in default, timm names, local files.

Every loader returns a timm model tagged with a `BaseSpec` (`model.qdeploy_base`), which is
what an adapted checkpoint records so the architecture can be rebuilt offline later.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from qdeploy.errors import QDeployError, first_line

BUILTIN_DEFAULT = "efficientnet_lite0"
_BUILTIN_ARCH = {BUILTIN_DEFAULT: "tf_efficientnet_lite0"}


@dataclass(frozen=True)
class BaseSpec:
    """Enough to rebuild a base architecture: timm arch, head size and constructor kwargs."""

    name: str
    arch: str
    num_classes: int
    checkpoint: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaseSpec":
        return cls(**data)


def build_architecture(spec: BaseSpec) -> nn.Module:
    """The architecture of `spec` with random weights (no download)."""
    return timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes, **spec.model_kwargs)


def _check_timm_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, [BUILTIN_DEFAULT, *timm.list_models()], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise QDeployError(
        f"unknown model {name!r}: not the built-in {BUILTIN_DEFAULT!r} nor a timm model name.{hint}"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file, or a torch file read with weights_only=True (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise QDeployError(f"checkpoint {path} does not exist; pass the path of a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError, ValueError on corrupt headers
            raise QDeployError(
                f"{path} is not a readable safetensors file ({exc}); re-save the weights with safetensors"
            ) from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError...
        raise QDeployError(
            f"cannot read {path} as weights ({type(exc).__name__}); qdeploy loads .pth files with "
            "weights_only=True only: save a plain state_dict or convert it to safetensors"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QDeployError(f"{path} does not hold a state_dict of tensors; save model.state_dict() instead")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with one clear error for a missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise QDeployError(f"{source}: unexpected key {key!r}; the weights belong to another architecture")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise QDeployError(
                f"{source}: shape mismatch at {key!r}: file has {tuple(value.shape)}, model expects "
                f"{tuple(expected[key].shape)}; check the architecture and num_classes"
            )
    missing = [k for k in expected if k not in state]
    if missing:
        raise QDeployError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing); the file is incomplete")
    model.load_state_dict(state, strict=True)


def _classifier_prefix(model: nn.Module) -> str:
    head = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is head)


def _create_timm_model(name: str, pretrained: bool, model_kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model with its two kinds of failure told apart.

    Hub, network and cache errors (all OSError: requests, urllib and huggingface_hub errors
    derive from it) mean the weights could not be fetched; anything else (a keyword the
    architecture does not take, say) is about the model itself and keeps its own message.
    """
    try:
        return timm.create_model(name, pretrained=pretrained, **model_kwargs)
    except OSError as exc:
        if not pretrained:
            raise
        raise QDeployError(
            f"could not fetch pretrained weights for {name!r} ({type(exc).__name__}); offline, "
            f"pass a local file with --checkpoint or use the built-in {BUILTIN_DEFAULT!r}"
        ) from exc
    except (TypeError, ValueError, RuntimeError) as exc:
        raise QDeployError(f"timm cannot build {name!r} with {model_kwargs or 'no options'}: {first_line(exc)}") from exc


def load_base_model(name: str = BUILTIN_DEFAULT, checkpoint: str | Path | None = None,
                    num_classes: int | None = None, pretrained: bool = True,
                    **model_kwargs: Any) -> nn.Module:
    """A pretrained base model in eval mode, tagged with its BaseSpec.

    name: the built-in `efficientnet_lite0` (ImageNet weights shipped by a pip package, works
        offline), or any timm model name (weights from the Hugging Face hub when online).
    checkpoint: a local .safetensors/.pth with weights for the timm architecture `name`.
    num_classes: re-initialise the head at this size when it differs from the weights'.
    pretrained: False builds random weights (tests, from-scratch baselines).
    """
    if name in _BUILTIN_ARCH:
        if checkpoint is not None:
            raise QDeployError(f"{name} is the built-in model with its own weights; drop --checkpoint")
        if pretrained:
            from qdeploy.models.efficientnet_lite0 import load_efficientnet_lite0

            model = load_efficientnet_lite0(num_classes=num_classes or 1000)
        else:
            model = timm.create_model(_BUILTIN_ARCH[name], pretrained=False, num_classes=num_classes or 1000)
        spec = BaseSpec(name, _BUILTIN_ARCH[name], model.num_classes, None, dict(model_kwargs))
    else:
        _check_timm_name(name)
        if checkpoint is not None:
            state = read_state_dict(checkpoint)
            model = timm.create_model(name, pretrained=False, **model_kwargs)
            head = _classifier_prefix(model)
            file_classes = next((v.shape[0] for k, v in state.items() if k.startswith(head) and v.dim() == 2), None)
            if file_classes is not None and file_classes != model.num_classes:
                model.reset_classifier(file_classes)
            load_state_checked(model, state, str(checkpoint))
        else:
            model = _create_timm_model(name, pretrained, model_kwargs)
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        arch = model.pretrained_cfg.get("architecture", name.split(".")[0])
        spec = BaseSpec(name, arch, model.num_classes, str(checkpoint) if checkpoint else None, dict(model_kwargs))
    model.qdeploy_base = spec
    return model.eval()


def base_spec_of(model: nn.Module) -> BaseSpec:
    """The BaseSpec recorded by load_base_model, or one derived from a plain timm model."""
    spec = getattr(model, "qdeploy_base", None)
    if spec is not None:
        return spec
    arch = getattr(model, "pretrained_cfg", {}).get("architecture")
    if arch is None:
        raise QDeployError(
            "cannot tell which architecture this model is; create it with timm or "
            "qdeploy.models.load_base_model so the adapted checkpoint can be rebuilt"
        )
    return BaseSpec(arch, arch, model.num_classes)
