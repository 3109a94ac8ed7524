"""Zero-start benefit scores on real data (adaptation/scores.py), with the head they need.

A head refitted to the data's classes is random, and gradients through a random head say
little about which quadratic term would help, so the head alone is trained first, on cached
pre-logit features (the primary and the zero terms do not change them: a few hundred images,
a hundred steps, well under a second), then the zero factors' gradients are scored.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from qdeploy.adaptation.scores import FirstStepGains, first_step_gains
from qdeploy.training.config import TrainConfig
from qdeploy.training.model_setup import fit_head_to_data
from qdeploy.training.probing import training_loss

HEAD_PROBE_LR = 1e-2
FEATURE_BATCHES = 8  # batches of cached features the head trains on (the scored ones among them)


def data_scorer(model: nn.Module, data: str, image_size: int, batches: int, batch_size: int, head_steps: int,
                seed: int) -> Callable[[nn.Module], FirstStepGains]:
    """Fit `model`'s head to `data`'s classes (in place; seeded, so the same head each time) and
    return the scorer of its adapted copies: first-step gains per quadratic layer and of the primary."""
    config = TrainConfig(data=data, image_size=image_size, seed=seed)
    bundle = fit_head_to_data(model, config)
    loss_fn = training_loss(config.label_smoothing)  # the loss training will minimise
    loader = DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    for images, labels in loader:
        held.append((images, labels))
        if len(held) == max(batches, FEATURE_BATCHES):
            break

    def score(adapted: nn.Module) -> FirstStepGains:
        adapted.eval()
        with torch.no_grad():
            features = [(adapted.forward_head(adapted.forward_features(x), pre_logits=True), y) for x, y in held]
        head = adapted.get_classifier()
        for param in head.parameters():
            param.requires_grad_(True)
        optimizer = torch.optim.AdamW(head.parameters(), lr=HEAD_PROBE_LR)
        for step in range(head_steps):
            x, y = features[step % len(features)]
            optimizer.zero_grad()
            loss_fn(head(x), y).backward()
            optimizer.step()
        return first_step_gains(adapted, held[:batches], loss_fn)

    return score
