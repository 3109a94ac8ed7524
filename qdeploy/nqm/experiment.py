"""The catapult experiment of Zhu et al. (arXiv 2205.11787) on two classes of scikit-learn digits.

A wide two-layer ReLU network, its NQM and its linearization start from the same weights and
are trained with full-batch gradient descent on squared loss at learning rates that are
multiples of the critical rate `2/lambda0`. Expected: below it all three decrease
monotonically; between `2/lambda0` and `4/lambda0` the network and the NQM catapult (the
loss spikes while the top kernel eigenvalue falls below `2/eta`, then converges) while the
linear model diverges; above `4/lambda0` the NQM diverges too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from qdeploy.nqm.catapult import CatapultDetector, CatapultEvent, Regime, classify_losses
from qdeploy.nqm.data import Split, accuracy, two_class_digits
from qdeploy.nqm.defaults import (
    CATAPULT_MULTIPLES,
    CATAPULT_N_TRAIN,
    CATAPULT_STEPS,
    CATAPULT_WIDTH,
    DIGIT_CLASSES,
)
from qdeploy.nqm.models import LinearizedModel, QuadraticModel
from qdeploy.nqm.sharpness import top_kernel_eigenvalue
from qdeploy.nqm.training import gradient_descent
from qdeploy.threads import torch_threads
from qdeploy.nqm.two_layer import TwoLayerReLU

MODEL_KINDS = ("nn", "nqm", "linear")


@dataclass(frozen=True)
class CatapultConfig:
    """The defaults take well under a minute on two shared CPU cores (about 35 s measured).

    The default digit pair keeps test accuracy off its ceiling. One thread: see `torch_threads`.
    """

    classes: tuple[int, int] = DIGIT_CLASSES
    n_train: int = CATAPULT_N_TRAIN
    width: int = CATAPULT_WIDTH
    multiples: tuple[float, ...] = CATAPULT_MULTIPLES
    """Learning rates in units of the critical rate `2/lambda0`."""
    steps: int = CATAPULT_STEPS
    sharpness_every: int = 2
    seed: int = 0
    threads: int = 1


@dataclass
class RunRecord:
    """One model trained at one learning rate, measured at every iterate."""

    model: str
    multiple: float
    lr: float
    losses: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    sharpness_steps: list[int] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    catapults: list[CatapultEvent] = field(default_factory=list)

    @property
    def regime(self) -> Regime:
        return classify_losses(self.losses)

    @property
    def best_test_accuracy(self) -> float | None:
        """Best accuracy over the run; None when it diverged (its early iterates mean nothing)."""
        return None if self.regime is Regime.DIVERGED else max(self.test_accuracy)

    def to_dict(self) -> dict[str, object]:
        record = asdict(self)
        record.update(
            regime=self.regime.value,
            best_test_accuracy=self.best_test_accuracy,
            catapults=[event.to_dict() for event in self.catapults],
        )
        return record


@dataclass
class CatapultResult:
    """Every run of the experiment and the `lambda0` their learning rates are scaled by."""

    config: CatapultConfig
    lambda0: float
    runs: list[RunRecord]

    def run(self, model: str, multiple: float) -> RunRecord:
        return next(r for r in self.runs if r.model == model and r.multiple == multiple)

    def accuracy_table(self) -> list[dict[str, object]]:
        """One row per learning rate: best test accuracy (None if diverged) and regime per model."""
        rows = []
        for multiple in self.config.multiples:
            row: dict[str, object] = {"multiple": multiple, "lr": 2 * multiple / self.lambda0}
            for kind in MODEL_KINDS:
                run = self.run(kind, multiple)
                row[kind] = {"best_test_accuracy": run.best_test_accuracy, "regime": run.regime.value}
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, object]:
        return {
            "config": asdict(self.config),
            "lambda0": self.lambda0,
            "critical_lr": 2 / self.lambda0,
            "nqm_divergence_lr": 4 / self.lambda0,
            "best_test_accuracy": self.accuracy_table(),
            "runs": [run.to_dict() for run in self.runs],
        }


def taylor_family(net: nn.Module) -> dict[str, nn.Module]:
    """Independent trainable copies of `net`, its NQM and its linearization, keyed by kind."""
    return {"nn": copy.deepcopy(net), "nqm": QuadraticModel(net), "linear": LinearizedModel(net)}


def run_catapult_experiment(
    config: CatapultConfig = CatapultConfig(),
    on_run_done: Callable[[RunRecord], None] | None = None,
) -> CatapultResult:
    """Train every model kind at every multiple of `2/lambda0`; `on_run_done` reports progress."""
    with torch_threads(config.threads):
        split = two_class_digits(config.classes, config.n_train, seed=config.seed)
        net = TwoLayerReLU(split.x_train.shape[1], config.width, seed=config.seed)
        lambda0 = top_kernel_eigenvalue(net, split.x_train)
        runs = []
        for multiple in config.multiples:
            for kind, model in taylor_family(net).items():
                record = RunRecord(kind, multiple, lr=2 * multiple / lambda0)
                _train(model, record, split, config)
                runs.append(record)
                if on_run_done is not None:
                    on_run_done(record)
    return CatapultResult(config, lambda0, runs)


def _train(model: nn.Module, record: RunRecord, split: Split, config: CatapultConfig) -> None:
    detector = CatapultDetector()

    def measure(step: int, loss: float) -> None:
        sharpness = None
        if step % config.sharpness_every == 0:
            sharpness = top_kernel_eigenvalue(model, split.x_train)
            record.sharpness_steps.append(step)
            record.sharpness.append(sharpness)
        with torch.no_grad():
            record.test_accuracy.append(accuracy(model(split.x_test), split.y_test))
        detector.update(step, loss, sharpness)

    record.losses = gradient_descent(model, split.x_train, split.y_train, record.lr, config.steps, on_step=measure)
    record.catapults = detector.events
