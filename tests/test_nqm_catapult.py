"""The catapult phase: the detector on synthetic curves, and the regimes on real training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qdeploy.nqm import CatapultDetector, Regime, TwoLayerReLU, classify_losses, gradient_descent, top_kernel_eigenvalue
from qdeploy.nqm.catapult import step_noise
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


# Per-step minibatch losses of `qdeploy train --train-primary --epochs 2` (AdamW, lr 2e-3,
# batch 32) on digits-shift: ordinary noise, with one hard batch at step 42 (1.70, over
# twice the running minimum 0.76), which the first detector took for a catapult.
ADAMW_DIGITS_LOSSES = [
    2.36, 2.41, 2.35, 2.35, 2.29, 2.08, 1.97, 2.06, 1.94, 1.64, 1.72, 1.83, 1.49, 1.47, 1.34, 1.24, 1.52, 0.93,
    1.08, 1.05, 1.24, 1.03, 1.12, 1.2, 1.27, 0.94, 1.04, 0.95, 1.33, 1.04, 0.9, 1.1, 1.03, 0.94, 0.9, 0.95, 1.3,
    0.97, 0.76, 0.97, 0.91, 1.7, 0.78, 0.97, 0.76, 0.79, 0.86, 0.78, 0.85, 0.77, 0.67, 0.95, 0.99, 0.88, 0.77,
    0.93, 0.79, 0.83, 0.84, 0.79, 0.78, 0.63, 0.62, 0.81, 0.65, 0.72, 0.65, 0.7, 0.74, 0.64, 0.83, 0.74, 0.6,
    0.62, 0.6, 0.64, 0.67, 0.78, 0.72, 0.65, 0.63, 0.58, 0.77, 0.66, 0.59, 0.71, 0.63, 0.68,
]


def test_minibatch_noise_is_not_a_catapult() -> None:
    assert _feed(CatapultDetector(), ADAMW_DIGITS_LOSSES) == []
    # The spike is there: judged against the running minimum alone (no noise test) it fires.
    [event] = _feed(CatapultDetector(noise_sigmas=0.0), ADAMW_DIGITS_LOSSES)
    assert event.start_step == 41 and event.peak_loss == 1.7  # _feed counts from 0
    # The hard batch is 5 noise levels above the window's median, under the 8 a catapult needs.
    assert step_noise(ADAMW_DIGITS_LOSSES[21:41]) == pytest.approx(0.136, abs=0.01)
    # Noise comes from step-to-step differences: a steady trend is (next to) none.
    assert step_noise(np.linspace(2.0, 1.0, 30).tolist()) == pytest.approx(0.0, abs=1e-12)
    assert step_noise(_decay(50).tolist()) < 0.1 * step_noise(ADAMW_DIGITS_LOSSES)


def test_a_spike_without_a_sharpness_drop_is_not_a_catapult() -> None:
    losses = _decay(40)
    losses[10:14] = losses[9] * np.array([5.0, 20.0, 3.0, 0.5])
    losses[14:] = losses[13] * _decay(26)
    steady = [2.0] * 40
    assert _feed(CatapultDetector(), losses.tolist(), steady) == []
    dropping = [2.0 if step < 11 else 1.0 for step in range(40)]
    assert len(_feed(CatapultDetector(), losses.tolist(), dropping)) == 1
    assert len(_feed(CatapultDetector(), losses.tolist())) == 1  # not measured: the loss decides


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
