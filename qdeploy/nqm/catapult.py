"""Recognising the catapult phase in a loss curve.

A catapult (Lewkowycz et al. 2020) is a transient: the loss leaves its running minimum,
grows for a few steps while the top kernel eigenvalue falls below `2/eta`, then comes back
down. `CatapultDetector` spots one while training streams losses in; `classify_losses`
labels a finished short run as monotone, catapult or diverged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum


class Regime(str, Enum):
    """How gradient descent behaved at one learning rate."""

    MONOTONE = "monotone"
    CATAPULT = "catapult"
    DIVERGED = "diverged"


def classify_losses(losses: Sequence[float], *, rise_tolerance: float = 1e-6) -> Regime:
    """Label a loss curve `L(w_0), L(w_1), ...`.

    Diverged: a non-finite loss, or it ended at or above where it started (in a short run a
    catapult that has not come back yet looks the same, so give it enough steps). Monotone:
    no step raised the loss by more than `rise_tolerance` (relative). Catapult: otherwise,
    i.e. the loss rose and then fell below its start.
    """
    if not all(math.isfinite(value) for value in losses) or losses[-1] >= losses[0]:
        return Regime.DIVERGED
    rises = (later - earlier > rise_tolerance * abs(earlier) for earlier, later in zip(losses, losses[1:]))
    return Regime.CATAPULT if any(rises) else Regime.MONOTONE


@dataclass(frozen=True)
class CatapultEvent:
    """One spike-and-recovery, with the sharpness seen on either side of it."""

    start_step: int
    peak_step: int
    end_step: int
    loss_before: float
    peak_loss: float
    loss_after: float
    sharpness_before: float | None
    sharpness_after: float | None

    def to_dict(self) -> dict[str, object]:
        """A flat, JSON-serialisable record for a metrics.jsonl line."""
        return {"event": "catapult", **asdict(self)}


@dataclass
class _Spike:
    start_step: int
    peak_step: int
    peak_loss: float
    loss_before: float
    sharpness_before: float | None
    sharpness_after: float | None = None


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def step_noise(losses: Sequence[float]) -> float:
    """The step-to-step noise of a loss trace: a robust standard deviation of one loss.

    From successive differences, so a steady trend (gradient descent's smooth decrease) is not
    counted as noise; the median absolute deviation (x 1.4826, the normal-consistent scale)
    ignores the occasional outlier; / sqrt(2) turns the spread of a difference of two
    independent draws into that of one draw. 0 with fewer than three differences.
    """
    values = list(losses)
    diffs = [later - earlier for earlier, later in zip(values, values[1:])]
    if len(diffs) < 3:
        return 0.0
    centre = _median(diffs)
    return 1.4826 * _median([abs(d - centre) for d in diffs]) / math.sqrt(2.0)


class CatapultDetector:
    """Streaming catapult detection for any training loop.

    A catapult is a large-learning-rate gradient-descent event, and minibatch training is
    noisy: one hard batch can double the loss without anything happening to the curvature.
    So a spike starts only when the loss is both above `spike_factor` times the lowest loss
    of the last `window` steps and more than `noise_sigmas` noise levels (`step_noise` of
    that window) above their median. It ends once the loss is back at or below
    `recovery_factor` times that lowest loss; `update` then returns a `CatapultEvent`,
    unless the sharpness was measured on both sides and did not drop (a catapult lowers the
    top eigenvalue below `2/eta`; a spike that leaves it unchanged is something else). A loss
    that never comes back (divergence, NaN) never produces an event. Pass `sharpness`
    whenever it was measured (it may be sparse): the event reports the last value before
    the spike and the latest one since it began.
    """

    def __init__(self, spike_factor: float = 2.0, recovery_factor: float = 1.0, noise_sigmas: float = 8.0,
                 window: int = 20) -> None:
        if spike_factor <= 1.0 or recovery_factor > spike_factor:
            raise ValueError("need spike_factor > 1 and recovery_factor <= spike_factor")
        if noise_sigmas < 0 or window < 1:
            raise ValueError("need noise_sigmas >= 0 and window >= 1")
        self.spike_factor, self.recovery_factor, self.noise_sigmas = spike_factor, recovery_factor, noise_sigmas
        self.events: list[CatapultEvent] = []
        self._recent: deque[float] = deque(maxlen=window)
        self._sharpness: float | None = None
        self._spike: _Spike | None = None

    def _is_spike(self, loss: float) -> bool:
        """Far above both the recent minimum (relative) and the recent noise (absolute); NaN is one."""
        if not math.isfinite(loss):
            return True
        if not self._recent:
            return False
        rise = loss - _median(self._recent)
        return loss > self.spike_factor * min(self._recent) and rise > self.noise_sigmas * step_noise(self._recent)

    def update(self, step: int, loss: float, sharpness: float | None = None) -> CatapultEvent | None:
        """Feed the loss (and optionally the sharpness) measured at `step`."""
        spike = self._spike
        if spike is None:
            if self._is_spike(loss):
                spike = self._spike = _Spike(step, step, loss, min(self._recent), sharpness_before=self._sharpness)
            else:
                self._recent.append(loss)
        elif loss > spike.peak_loss:
            spike.peak_step, spike.peak_loss = step, loss
        if sharpness is not None:
            self._sharpness = sharpness
            if spike is not None:
                spike.sharpness_after = sharpness
        if spike is None or not loss <= self.recovery_factor * spike.loss_before:
            return None
        self._spike = None
        self._recent.clear()
        self._recent.append(loss)
        before, after = spike.sharpness_before, spike.sharpness_after
        if before is not None and after is not None and after >= before:
            return None
        event = CatapultEvent(
            start_step=spike.start_step,
            peak_step=spike.peak_step,
            end_step=step,
            loss_before=spike.loss_before,
            peak_loss=spike.peak_loss,
            loss_after=loss,
            sharpness_before=spike.sharpness_before,
            sharpness_after=spike.sharpness_after,
        )
        self.events.append(event)
        return event
