"""Benefit scores from training: every candidate term trains together, then each is switched off.

The zero-start score (adaptation/scores.py) is a first-order model of one step, and short trials
of a few proposed sets (set_trials.py) rank sets whose differences are about one seed's spread
(docs/hardware-aware.md). This score asks the trained model instead, as structured pruning does:
all candidate terms train together, the way the run trains (primary frozen or trained, same batch,
AdamW), for `steps`; then each term in turn is set back to zero (its zero factor, so it is exactly
off, adaptation/scores.zero_factor) and the held-out loss rise says how much the trained model
relies on it. One training run scores every layer, whatever the number of sets a knapsack could
build from them; the rises are additive only to first order (terms trained together can share
work), which the knapsack assumes as it does for every score.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from qdeploy.adaptation.inject import quadratic_layers
from qdeploy.adaptation.scores import zero_factor
from qdeploy.layers import QuadConfig
from qdeploy.training.set_trials import TrainingTrial, trial_config, trial_setup


def loss_rises(trial: TrainingTrial) -> dict[str, float]:
    """Held-out loss with each quadratic layer's term zeroed, minus the loss with all on; the model is restored."""
    with_all, _ = trial.judge()
    rises = {}
    for name, layer in quadratic_layers(trial.model).items():
        factor = zero_factor(layer)
        saved = [p.detach().clone() for p in factor]
        with torch.no_grad():
            for p in factor:
                p.zero_()
            rises[name] = trial.judge()[0] - with_all
            for p, value in zip(factor, saved):
                p.copy_(value)
    return rises


def ablation_scorer(model: nn.Module, data: str, image_size: int, quad: QuadConfig, train_primary: bool,
                    batch_size: int, seed: int, steps: int) -> Callable[[Sequence[str]], dict[str, float]]:
    """The scorer of a plan: candidate layers -> each one's held-out loss rise when its term is zeroed, after
    all of them trained `steps` steps together on the training split less the held-out images.

    `model` (the unadapted base) is copied with its head refitted to `data`'s classes, as a run refits it.
    The data loads when the scorer runs: a plan read from the cache never trains."""
    config = trial_config(data, image_size, train_primary, batch_size, seed)

    def score(candidates: Sequence[str]) -> dict[str, float]:
        base, batches, judged = trial_setup(model, config)
        trial = TrainingTrial(base, candidates, config, quad, batches, judged)
        trial.advance(steps)
        return loss_rises(trial)

    return score
