"""What each candidate layer's quadratic term adds to a trained-primary training step, measured.

At equal training wall time a dearer step is fewer steps, and with the primary trained the
pretrained weights learn in every one of them: a term placed where its backward pass is dear
(a dilated depthwise conv at high resolution) can cost more fine-tuning than it adds. The
plan's trained-primary choice (adaptation/knapsack.py `choose_rate`) weighs each layer's
first-step gain against this cost.

The base step is timed as the trainer takes it (forward, loss, backward, AdamW update, every
parameter trainable) on one random batch of the training size: the compute does not depend on
the pixel values. What a term adds is timed on the term alone (its forward and backward, input
gradient included, on the input the layer sees in that batch): a whole step with one term differs
from the base by less than two steps of the same model differ on a shared 2-core machine
(one step of Lite0 at 64 px: 0.64 s, its terms add 25-230 ms, single steps spread +-50 ms), while
the term alone repeats closer (in one process, two runs agreed within 5 ms for 15 of 16 layers;
another process, after ONNX Runtime sessions, read the late layers up to 2x dearer). The term's
optimizer update (its few parameters) is left out.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from qdeploy.adaptation import adapt, quadratic_layers, randomize_quadratic_terms
from qdeploy.layers import QuadConfig

STEP_ROUNDS = 5  # timed turns of the base step and every term (after one untimed warm-up turn)


@dataclass(frozen=True)
class StepCosts:
    """Seconds of one training step: `base_s` without terms, `added_s` what each candidate's term adds."""

    base_s: float
    added_s: dict[str, float]


def _stepper(model: nn.Module, batch_size: int, size: tuple[int, int], seed: int) -> Callable[[], None]:
    """One AdamW training step of `model` (every parameter trainable) on a fixed random batch."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, *size, generator=generator)
    with torch.no_grad():
        classes = model.eval()(images[:1]).shape[-1]
    model.train()
    for param in model.parameters():
        param.requires_grad_(True)
    labels = torch.randint(0, classes, (batch_size,), generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)  # the update's cost, not its effect, is wanted

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def training_step_costs(model: nn.Module, candidates: Sequence[str], quad: QuadConfig, batch_size: int,
                        size: tuple[int, int], seed: int = 0, rounds: int = STEP_ROUNDS,
                        progress: Callable[[str], None] | None = None) -> StepCosts:
    """Median seconds of a trained-primary step of `model` (left unchanged) and of each candidate
    layer's term (forward + backward on the layer's input in that step), timed in `rounds` turns
    in which the base step and every term run once each: a slow phase of the machine hits them all."""
    adapted, _ = adapt(copy.deepcopy(model), list(candidates), config=quad, freeze=False, count_model_flops=False)
    randomize_quadratic_terms(adapted)  # zero factors take the same time; random ones keep the values finite
    layers = quadratic_layers(adapted)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0]))
             for name, layer in layers.items()]
    with torch.no_grad():
        adapted.train()(torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(seed)))
    for hook in hooks:
        hook.remove()
    runs: dict[str | None, Callable[[], None]] = {None: _stepper(copy.deepcopy(model), batch_size, size, seed)}
    runs.update({name: _term_step(layers[name].quad, inputs[name]) for name in candidates})
    times: dict[str | None, list[float]] = {name: [] for name in runs}
    for round_index in range(rounds + 1):  # round 0 warms up: allocations, first-call paths
        if progress:
            progress(f"timing a training step and each term alone, round {round_index}/{rounds}")
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if round_index:
                times[name].append(time.perf_counter() - started)
    return StepCosts(statistics.median(times[None]), {name: statistics.median(times[name]) for name in candidates})


def _term_step(term: nn.Module, layer_input: torch.Tensor) -> Callable[[], None]:
    """Forward and backward of one quadratic term on its layer's input (input gradient included)."""
    x = layer_input.detach().requires_grad_(True)

    def step() -> None:
        out = term(x)
        out.backward(torch.ones_like(out))

    return step
