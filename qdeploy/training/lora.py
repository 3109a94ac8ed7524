"""`--mode lora`: the first-order low-rank baseline, through HF PEFT, at the quadratic budget.

Why: a user weighing quadratic adaptation asks whether it beats what they already use. LoRA
(Hu et al. 2021) adds `B(A(x))` with `B` zero-started beside a frozen layer: the same
"pretrained model at step 0, train a small low-rank addition" recipe, but first order. For
a fair comparison it gets the quadratic adapter's trainable parameter count: the rank is the
one whose LoRA parameter count is nearest to what `adapt` (same --rank, --depthwise-rank,
--dilation) would add. The head trains in both.

Targets: the quadratic adapter's targets where PEFT's LoRA takes them. PEFT (0.21) wraps
`nn.Linear` and `nn.Conv2d`, but a grouped conv only at a rank divisible
by its groups (its `lora_A` is a dense k x k conv to `r` channels), so a depthwise conv of
C channels costs at least C * C * k * k parameters, far past the budget (e.g. 33 M for one
1,152-channel 5x5 layer of EfficientNet-Lite0, against 179 k for the whole quadratic
adapter). Such a target is replaced by the nearest set PEFT supports at the budget: the
ungrouped convs/linears of the same block (for EfficientNet/MobileNet, the 1x1 expansion and
projection convs around each depthwise conv); the run's summary says so.

On disk, a LoRA model is the plain model's folder (base.json + model.safetensors, the
wrapped layers' weights included) with the LoRA settings under base.json's "lora" key;
`qdeploy.store.inject_lora` rebuilds the same layers on reload.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from qdeploy.adaptation import adapt
from qdeploy.adaptation.targets import resolve_targets
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig
from qdeploy.store import inject_lora

LORA_MARK = "lora_"  # PEFT's parameter names: <layer>.lora_A.<adapter>.weight, lora_B likewise


@dataclass(frozen=True)
class LoraPlan:
    """What `--mode lora` trains: PEFT's targets, the matched rank, and how they were chosen."""

    targets: list[str]
    rank: int
    lora_params: int  # LoRA weights at `rank` (the head comes on top, as in adapt)
    quadratic_params: int  # the budget: what the quadratic adapter adds
    quadratic_targets: list[str]
    substituted: dict[str, list[str]]  # quadratic target PEFT cannot take at the budget -> its replacements
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _params_per_rank(module: nn.Module) -> int:
    """LoRA parameters per unit of rank: lora_A (in x k x k per output) + lora_B (1x1 to out)."""
    if isinstance(module, nn.Linear):
        return module.in_features + module.out_features
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return module.in_channels * kernel + module.out_channels // module.groups


def _supported(module: nn.Module) -> bool:
    """PEFT takes a Linear or an ungrouped Conv2d at any rank."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _block_replacements(model: nn.Module, name: str) -> list[str]:
    """The ungrouped convs/linears that share `name`'s parent block (its nearest supported set)."""
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    prefix = parent + "." if parent else ""
    return [sibling for sibling, module in model.named_modules()
            if sibling.startswith(prefix) and sibling.count(".") == name.count(".") and _supported(module)]


def plan_lora(model: nn.Module, quad: QuadConfig, image_size: int) -> LoraPlan:
    """Targets and rank so LoRA trains as many parameters as the quadratic adapter would add."""
    _, report = adapt(copy.deepcopy(model), config=quad, input_size=(3, image_size, image_size),
                      count_model_flops=False)
    modules = dict(model.named_modules())
    targets: list[str] = []
    substituted: dict[str, list[str]] = {}
    for name in resolve_targets(model, None):
        if _supported(modules[name]):
            replacements = [name]
        else:
            replacements = substituted[name] = _block_replacements(model, name)
            if not replacements:
                raise QDeployError(f"PEFT LoRA cannot take {name} (grouped conv) at the quadratic budget and its "
                                   "block has no ungrouped conv or linear to use instead; use --mode adapt or finetune")
        targets += [t for t in replacements if t not in targets]
    per_rank = sum(_params_per_rank(modules[t]) for t in targets)
    rank = max(1, round(report.added_params / per_rank))
    note = "PEFT LoRA on the quadratic adapter's targets"
    if substituted:
        grouped_min = sum(_params_per_rank(modules[n]) * modules[n].groups for n in substituted)
        note = (f"PEFT LoRA takes a grouped conv only at a rank divisible by its groups ({len(substituted)} grouped "
                f"targets: >= {grouped_min:,} params at the smallest such rank, budget {report.added_params:,}); "
                f"used the {len(targets)} ungrouped convs/linears of the same blocks instead")
    return LoraPlan(targets, rank, rank * per_rank, report.added_params, list(report.layers), substituted, note)


def lora_settings(plan: LoraPlan) -> dict[str, Any]:
    """The LoraConfig arguments a run uses and its model folder records (JSON-serialisable)."""
    return {"r": plan.rank, "lora_alpha": plan.rank, "target_modules": plan.targets, "lora_dropout": 0.0}


def apply_lora(model: nn.Module, quad: QuadConfig, image_size: int) -> tuple[nn.Module, LoraPlan]:
    """Plan and inject LoRA at the quadratic budget."""
    plan = plan_lora(model, quad, image_size)
    return inject_lora(model, lora_settings(plan)), plan


def mark_trainable(model: nn.Module) -> None:
    """Only the LoRA weights and the classifier head train."""
    for name, param in model.named_parameters():
        param.requires_grad_(LORA_MARK in name)
    for param in model.get_classifier().parameters():
        param.requires_grad_(True)
