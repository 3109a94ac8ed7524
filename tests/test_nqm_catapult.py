"""The catapult phase: the detector on synthetic curves, and the regimes on real training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qdeploy.nqm import CatapultDetector, Regime, TwoLayerReLU, classify_losses, gradient_descent, top_kernel_eigenvalue
from qdeploy.nqm.data import two_class_digits
from qdeploy.nqm.experiment import taylor_family


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feed(detector: CatapultDetector, losses, sharpness=None) -> list:
    sharpness = sharpness or [None] * len(losses)
    events = [detector.update(step, loss, s) for step, (loss, s) in enumerate(zip(losses, sharpness))]
    return [event for event in events if event is not None]


def _decay(steps: int) -> np.ndarray:
    return np.exp(-np.arange(steps) / 20.0)


def test_detector_fires_once_on_a_spike_and_recovery() -> None:
    losses = _decay(60)
    losses[10:16] = losses[9] * np.array([3.0, 12.0, 40.0, 9.0, 2.5, 1.1])  # up, peak at 12, down
    losses[16:] = losses[9] * 0.9 * _decay(44)
    sharpness = [2.0 if step < 12 else 0.5 for step in range(60)]
    detector = CatapultDetector()
    events = _feed(detector, losses.tolist(), sharpness)
    assert len(events) == 1 and detector.events == events
    event = events[0]
    assert (event.start_step, event.peak_step, event.end_step) == (10, 12, 16)
    assert event.loss_before == pytest.approx(losses[9])
    assert event.peak_loss == pytest.approx(losses.max())
    assert event.loss_after == pytest.approx(losses[16])
    assert (event.sharpness_before, event.sharpness_after) == (2.0, 0.5)
    record = json.loads(json.dumps(event.to_dict()))
    assert record["event"] == "catapult" and record["peak_step"] == 12


def test_detector_ignores_noise_monotone_decrease_and_divergence() -> None:
    noise = np.random.default_rng(0).uniform(0.7, 1.3, 300)
    assert _feed(CatapultDetector(), (_decay(300) * noise).tolist()) == []
    assert _feed(CatapultDetector(), _decay(300).tolist()) == []
    diverging = np.concatenate([_decay(10), 2.0 ** np.arange(20), [math.nan, math.nan]])
    assert _feed(CatapultDetector(), diverging.tolist()) == []


def test_classify_losses() -> None:
    assert classify_losses([1.0, 0.5, 0.4]) is Regime.MONOTONE
    assert classify_losses([1.0, 3.0, 0.5]) is Regime.CATAPULT
    assert classify_losses([1.0, 3.0, 2.0]) is Regime.DIVERGED
    assert classify_losses([1.0, 0.5, math.inf]) is Regime.DIVERGED


@pytest.fixture(scope="module")
def problem():
    """A wide net on 32 seeded digits, in float64, and lambda0 = top eigenvalue of J J^T / n."""
    split = two_class_digits((8, 9), 32, seed=0, dtype=torch.float64)
    net = TwoLayerReLU(split.x_train.shape[1], 512, seed=0, dtype=torch.float64)
    return split, net, top_kernel_eigenvalue(net, split.x_train)


def _train_family(problem, lr_times_lambda0: float, steps: int = 100):
    split, net, lambda0 = problem
    lr = lr_times_lambda0 / lambda0
    runs = {}
    for kind, model in taylor_family(net).items():
        losses = gradient_descent(model, split.x_train, split.y_train, lr, steps)
        runs[kind] = (np.array(losses), top_kernel_eigenvalue(model, split.x_train), lr)
    return runs


def test_below_two_over_lambda0_the_loss_never_rises(problem) -> None:
    for kind, (losses, _, _) in _train_family(problem, 1.5).items():
        assert len(losses) == 101, kind
        assert np.all(np.diff(losses) < 0), kind
        assert losses[-1] < 0.1 * losses[0], kind


def test_between_two_and_four_network_and_nqm_catapult_and_linear_diverges(problem) -> None:
    runs = _train_family(problem, 3.0)
    for kind in ("nn", "nqm"):
        losses, final_sharpness, lr = runs[kind]
        peak = int(np.argmax(losses))
        assert 0 < peak < len(losses) - 1, kind
        assert losses[peak] > 2 * losses[0], kind  # the loss rises ...
        assert losses[-1] < losses[0], kind  # ... then falls below its start
        assert np.all(np.isfinite(losses)), kind
        assert final_sharpness < 2 / lr, kind  # the kernel flattened enough to converge
        assert len(_feed(CatapultDetector(), losses.tolist())) == 1, kind
    linear_losses, linear_sharpness, lr = runs["linear"]
    assert classify_losses(linear_losses.tolist()) is Regime.DIVERGED
    assert linear_losses[-1] > 1e6 * linear_losses[0]
    assert linear_sharpness == pytest.approx(problem[2])  # the linear model's kernel is constant


def test_above_four_over_lambda0_the_nqm_diverges(problem) -> None:
    losses, _, _ = _train_family(problem, 4.5)["nqm"]
    assert classify_losses(losses.tolist()) is Regime.DIVERGED
    assert not np.isfinite(losses[-1]) or losses[-1] > 1e6 * losses[0]
