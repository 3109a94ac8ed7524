"""Short measured trials of candidate layer sets: which set trains best, by training it a little.

A plan's objective is a first-order model of what a term buys: the loss decrease of the first
optimizer step (adaptation/scores.py), per second of a training step with the primary trained
(knapsack.choose_rate). Measured on digits-shift, it misjudges what a term adds over a hundred
steps: the trained-primary rate kept one layer where a second late layer added ~1.4 points, and
both modes' 1.10 plans trained 1.2-1.4 points under the best of three random sets of the same cost
(docs/hardware-aware.md). So a plan with `trials` hands its best few sets to successive halving
(Jamieson & Talwalkar, 2016): every set trains `first_steps` steps, the better half (by held-out
loss) trains on to twice that, and so on until one is left. With the primary trained the run has a
fixed time, so each set trains the steps that fit the same time (its `pace`: base step / its step).

The trials train as the run will (the plan's primary mode, AdamW at the trainer's defaults, the
same batch size), on the training split less a held-out slice they are judged on: the val split
the run reports stays unseen. Every set sees the same batches in the same order and starts from
the same head, so their differences are the layers', not the draw's. Held-out cross-entropy
(without label smoothing) ranks them: over a few hundred images it resolves differences the
accuracy rounds away.

Measured on digits-shift at 1.10 (docs/hardware-aware.md, "Trials"): trials of up to 96 steps did
not predict minute-long runs (the sets that fit differ by about one sd of a seed), so plans keep
`trials=0` by default.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from qdeploy.adaptation import adapt
from qdeploy.layers import QuadConfig
from qdeploy.training.config import TrainConfig
from qdeploy.training.model_setup import fit_head_to_data, set_trainable
from qdeploy.training.optim import build_optimizer, clip_gradients, lr_factor, set_lr
from qdeploy.training.probing import training_loss

HELD_OUT = 360  # training images the trials are judged on (digits-shift: a quarter of its 1,437)
TRIAL_WARMUP = 5  # linear warm-up steps, then the constant rate budget_pareto's runs use


class Trial(Protocol):
    """One set in training: `advance` trains it up to a step count, `judge` is its held-out loss."""

    def advance(self, steps: int) -> None: ...

    def judge(self) -> tuple[float, float]: ...  # (held-out loss, held-out accuracy)


@dataclass(frozen=True)
class TrialRound:
    steps: int  # every set of the round has trained this many steps
    loss: dict[int, float]  # set index -> held-out loss
    accuracy: dict[int, float]


Ranking = tuple[list[int], list[TrialRound]]  # indices of the sets, best first; every round
Batch = tuple[torch.Tensor, torch.Tensor]  # images, labels


def successive_halving(trials: Sequence[Trial], first_steps: int, pace: Sequence[float] | None = None) -> Ranking:
    """(indices of `trials`, best first; every round) of successive halving: all train `first_steps`,
    the better half (lower held-out loss, ties to the earlier set) doubles its steps, until one is left
    (4 sets: 4 x first_steps, then 2 trained on to 2 x first_steps; 6 x first_steps in all).

    The ranking puts sets that lasted longer first, then by their last round's loss: a plan that
    falls back from the winner (its latency check failed) takes the runner-up of the last round.
    `pace`: each set's steps per round step (a trained-primary run has a fixed time, so a set whose
    step is dearer trains fewer: the base step over its own); None: equal steps.
    """
    alive, steps, rounds = list(range(len(trials))), first_steps, []
    while True:
        for index in alive:
            trials[index].advance(max(1, round(steps * (pace[index] if pace else 1.0))))
        judged = {index: trials[index].judge() for index in alive}
        rounds.append(TrialRound(steps, {i: loss for i, (loss, _) in judged.items()},
                                 {i: acc for i, (_, acc) in judged.items()}))
        alive = sorted(alive, key=lambda i: (judged[i][0], i))[:math.ceil(len(alive) / 2)]
        if len(alive) <= 1:
            break
        steps *= 2
    ranking: list[int] = []
    for round_ in reversed(rounds):
        ranking += [i for i in sorted(round_.loss, key=lambda i: (round_.loss[i], i)) if i not in ranking]
    return ranking, rounds


def held_out_split(train: Dataset, held_out: int, seed: int) -> tuple[Dataset, Dataset]:
    """(what the trials train on, what they are judged on): a seeded slice of `held_out` training images."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    held = min(held_out, len(train) // 4)  # a small set keeps three quarters to train on
    return Subset(train, sorted(order[held:])), Subset(train, sorted(order[:held]))


class TrainingTrial:
    """A copy of the base model with one layer set adapted, trained as the run trains it."""

    def __init__(self, model: nn.Module, layers: Sequence[str], config: TrainConfig, quad: QuadConfig,
                 batches: Callable[[], Iterator[Batch]], judged: list[Batch]):
        torch.manual_seed(config.seed)  # each set's non-zero factors drawn alike
        self.model, _ = adapt(copy.deepcopy(model), list(layers), config=quad, count_model_flops=False)
        set_trainable(self.model, config)
        self.config, self.optimizer = config, build_optimizer(self.model, config)
        self.loss_fn, self.batches, self.judged, self.step = training_loss(config.label_smoothing), batches(), judged, 0

    def advance(self, steps: int) -> None:
        self.model.train()
        while self.step < steps:
            images, labels = next(self.batches)
            set_lr(self.optimizer, self.config.lr * lr_factor(self.step, self.config, steps))
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_fn(self.model(images), labels).backward()
            clip_gradients(self.optimizer, self.config.max_grad_norm)
            self.optimizer.step()
            self.step += 1

    @torch.no_grad()
    def judge(self) -> tuple[float, float]:
        self.model.eval()
        loss = correct = count = 0.0
        for images, labels in self.judged:
            logits = self.model(images).float()
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            count += len(labels)
        return loss / count, correct / count


def set_trials(model: nn.Module, data: str, image_size: int, quad: QuadConfig, train_primary: bool,
               batch_size: int, seed: int) -> Callable[..., Ranking]:
    """The trial runner of a plan: (layer sets, first steps, pace) -> successive_halving's (ranking, rounds).

    `model` is the unadapted base: every trial copies it with the head refitted to `data` (trial_setup).
    The data loads when the runner runs: a plan read from the cache never trains a trial.
    """
    config = trial_config(data, image_size, train_primary, batch_size, seed)

    def run(sets: Sequence[Sequence[str]], first_steps: int, pace: Sequence[float] | None = None) -> Ranking:
        base, batches, judged = trial_setup(model, config)
        trials = [TrainingTrial(base, layers, config, quad, batches, judged) for layers in sets]
        return successive_halving(trials, first_steps, pace)

    return run


def trial_config(data: str, image_size: int, train_primary: bool, batch_size: int, seed: int) -> TrainConfig:
    """How trials train: as the run does (primary mode, batch, AdamW defaults), at a constant rate after a warm-up."""
    return replace(TrainConfig(data=data, image_size=image_size, seed=seed, train_primary=train_primary,
                               batch_size=batch_size), scheduler="constant", warmup_steps=TRIAL_WARMUP)


def trial_setup(model: nn.Module, config: TrainConfig) -> tuple[nn.Module, Callable[[], Iterator[Batch]], list[Batch]]:
    """(a copy of `model` with its head refitted to `config.data` (model_setup.fit_head_to_data); a factory of
    the endless, seeded batch sequence every trial sees alike, from the training split less HELD_OUT images;
    those held-out images, in batches, which the trials are judged on)."""
    base = copy.deepcopy(model)
    train, held = held_out_split(fit_head_to_data(base, config).train, HELD_OUT, config.seed)

    def batches() -> Iterator[Batch]:
        for epoch in itertools.count():
            yield from DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                  generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))

    return base, batches, list(DataLoader(held, batch_size=2 * config.batch_size))
