"""Timing several things fairly on a shared machine: interleaved turns, each warmed up after the switch.

Why turns and not one run of each in alternation: every ONNX Runtime session keeps its own
intra-op thread pool whose workers spin after a run. On this 2-core machine, timing one
session right after another ran made the next one 2-4x slower (measured on EfficientNet-Lite0,
64 px: batch 32 took 62-67 ms alternated run by run, 24-27 ms in turns; batch 1 jumped
between 1.4 and 6.7 ms), and the ratios between files were noise. So each target gets
turns: untimed runs for at least `switch_warmup_s` after the switch (the previous
session's threads settle), then a share of the timed runs; `rounds` turns per target
interleave them, so a load change on the machine hits every target alike. The pooled
timed runs are what the caller takes percentiles of.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable, Mapping, TypeVar

Key = TypeVar("Key", bound=Hashable)
SWITCH_WARMUP_S = 0.05  # untimed seconds after switching targets; 0.02 still left 4x outliers at batch 1 (measured)


def timed_turn(run: Callable[[], object], warmup: int, iterations: int, time_budget_s: float | None = None,
               warmup_s: float = 0.0) -> list[float]:
    """Seconds of up to `iterations` runs (at least one, whatever the budget) after `warmup` untimed runs
    and untimed runs for at least `warmup_s` seconds."""
    settle = time.perf_counter() + warmup_s
    done = 0
    while done < warmup or time.perf_counter() < settle:
        run()
        done += 1
    times: list[float] = []
    deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s
    while len(times) < iterations and (deadline is None or time.perf_counter() < deadline or not times):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def time_in_turns(runs: Mapping[Key, Callable[[], object]], rounds: int, iterations: int,
                  time_budget_s: float | None = None, warmup: int = 1, switch_warmup_s: float = SWITCH_WARMUP_S,
                  progress: Callable[[Key, int], None] | None = None) -> dict[Key, list[float]]:
    """Seconds of each run, pooled over `rounds` turns per key (at most `iterations` runs in all, shared
    out over the turns, as is `time_budget_s`; fewer turns when there are fewer iterations than
    rounds); `warmup` untimed runs open every key's first turn, one opens the others, and with
    more than one key every turn first settles for `switch_warmup_s`."""
    rounds = max(1, min(rounds, iterations))
    budget = None if time_budget_s is None else time_budget_s / rounds
    settle = switch_warmup_s if len(runs) > 1 else 0.0
    times: dict[Key, list[float]] = {key: [] for key in runs}
    for round_index in range(rounds):
        for key, run in runs.items():
            if progress:
                progress(key, round_index)
            share = iterations // rounds + (round_index < iterations % rounds)
            times[key] += timed_turn(run, warmup if round_index == 0 else 1, share, budget, settle)
    return times
