"""Recognising the catapult phase in a loss curve.

A catapult (Lewkowycz et al. 2020) is a transient: the loss leaves its running minimum,
grows for a few steps while the top kernel eigenvalue falls below `2/eta`, then comes back
down. `CatapultDetector` spots one while training streams losses in; `classify_losses`
labels a finished short run as monotone, catapult or diverged.
"""

from __future__ import annotations

import math
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
    sharpness_before: float | None
    sharpness_after: float | None = None


class CatapultDetector:
    """Streaming catapult detection for any training loop.

    A spike starts when the loss exceeds `spike_factor` times its running minimum; it ends,
    and `update` returns a `CatapultEvent`, once the loss is back at or below
    `recovery_factor` times that minimum. A loss that never comes back (divergence, NaN)
    never produces an event. Pass `sharpness` whenever it was measured (it may be sparse):
    the event reports the last value before the spike and the latest one since it began.
    """

    def __init__(self, spike_factor: float = 2.0, recovery_factor: float = 1.0) -> None:
        if spike_factor <= 1.0 or recovery_factor > spike_factor:
            raise ValueError("need spike_factor > 1 and recovery_factor <= spike_factor")
        self.spike_factor = spike_factor
        self.recovery_factor = recovery_factor
        self.events: list[CatapultEvent] = []
        self._minimum = math.inf
        self._sharpness: float | None = None
        self._spike: _Spike | None = None

    def update(self, step: int, loss: float, sharpness: float | None = None) -> CatapultEvent | None:
        """Feed the loss (and optionally the sharpness) measured at `step`."""
        spike = self._spike
        if spike is None:
            if loss <= self.spike_factor * self._minimum:
                self._minimum = min(self._minimum, loss)
            else:  # a NaN also starts a spike, one that never recovers
                spike = self._spike = _Spike(step, step, loss, sharpness_before=self._sharpness)
        elif loss > spike.peak_loss:
            spike.peak_step, spike.peak_loss = step, loss
        if sharpness is not None:
            self._sharpness = sharpness
            if spike is not None:
                spike.sharpness_after = sharpness
        if spike is None or not loss <= self.recovery_factor * self._minimum:
            return None
        event = CatapultEvent(
            start_step=spike.start_step,
            peak_step=spike.peak_step,
            end_step=step,
            loss_before=self._minimum,
            peak_loss=spike.peak_loss,
            loss_after=loss,
            sharpness_before=spike.sharpness_before,
            sharpness_after=spike.sharpness_after,
        )
        self.events.append(event)
        self._spike = None
        self._minimum = loss
        return event
