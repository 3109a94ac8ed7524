"""Timing several things fairly on a shared machine: interleaved turns, or alternation in short blocks.

Every ONNX Runtime session keeps its own intra-op thread pool whose workers spin after a run.
On this 2-core machine, timing one spinning session right after another ran made the next one
2-4x slower (measured on EfficientNet-Lite0, 64 px: batch 32 took 62-67 ms alternated run by
run, 24-27 ms in turns; batch 1 jumped between 1.4 and 6.7 ms), and the ratios between files
were noise. Two schedules follow from that:

- `time_turns` (sessions that spin, as deployed): each target gets turns, untimed runs for at
  least `switch_warmup_s` after the switch (the previous session's threads settle), then a
  share of the timed runs; `rounds` turns per target interleave them, so a load change on the
  machine hits every target alike. The machine's speed still drifts within and between turns:
  five rounds of one adapted/base pair spread 1.02-1.12x at 64 px, batch 1.
- `time_alternating` (sessions that stop spinning when a run ends, which leave the cores idle
  between runs): each cycle runs a short block of each target in turn, its first runs untimed,
  so each cycle's ratio pairs runs a few milliseconds apart and the drift cancels cycle by
  cycle. The untimed runs matter: right after another model ran, batch 1 is slower (the caches
  hold the other model) and the adapted/base ratio read low, 1.19-1.21x on the first run
  against 1.25-1.30x from the third on (7 of 16 Lite0 layers, 64 px, 2 threads), which is what
  a deployed model serving one request after another sees and what spinning sessions in turns
  read too (1.26-1.38x). One run per cycle had passed sets that deployed above the budget.
  Batch 32 showed no such effect (1.16-1.24x at every position), nor did 224 px, batch 32,
  where a run lasts ~110 ms and the untimed run only halved the cycles paired (rounds' sd 0.043
  with it, 0.023 without: benchmarks/block_settle.py), so long runs skip it. This is how ratios are
  measured where a budget depends on them (the latency plan, the pipeline's bench).

The pooled timed runs are what the caller takes percentiles of; ratios pair the turns (or
the blocks of a cycle) with `paired_ratio`; `median_interval` says how sure a median over
rounds is, and `prediction_bound` where one more round (a bench, a deployed process) lands. The
plan check passes a set on the second and adds rounds while a budget lies between the two.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Hashable, Mapping, Sequence, TypeVar

import numpy as np

Key = TypeVar("Key", bound=Hashable)
SWITCH_WARMUP_S = 0.05  # untimed seconds after switching targets; 0.02 still left 4x outliers at batch 1 (measured)
BLOCK_SETTLE_S = 0.004  # untimed seconds (one run at least) opening each block of an alternation: 3-4 runs at
# 64 px, batch 1, where the ratio settled by the third run; one at batch 32, where it did not move (measured)
BLOCK_TIMED_S = 0.004  # timed seconds (one run at least) closing it: short, so paired blocks stay close in time
SETTLED_RUN_S = 0.05  # a key whose runs last this long opens its blocks with no untimed run (see time_alternating)
PREDICTION_CONFIDENCE = 0.8  # prediction_bound's: 5 rounds suffice (the largest of 5 holds 5/6); 0.9 needs 9


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


def time_turns(runs: Mapping[Key, Callable[[], object]], rounds: int, iterations: int,
               time_budget_s: float | None = None, warmup: int = 1, switch_warmup_s: float = SWITCH_WARMUP_S,
               progress: Callable[[Key, int], None] | None = None) -> dict[Key, list[list[float]]]:
    """Seconds of each run, turn by turn: `rounds` turns per key, in the order of `runs` (at most
    `iterations` runs in all, shared out over the turns, as is `time_budget_s`; fewer turns when there
    are fewer iterations than rounds); `warmup` untimed runs open every key's first turn, one opens
    the others, and with more than one key every turn first settles for `switch_warmup_s`."""
    rounds = max(1, min(rounds, iterations))
    budget = None if time_budget_s is None else time_budget_s / rounds
    settle = switch_warmup_s if len(runs) > 1 else 0.0
    turns: dict[Key, list[list[float]]] = {key: [] for key in runs}
    for round_index in range(rounds):
        for key, run in runs.items():
            if progress:
                progress(key, round_index)
            share = iterations // rounds + (round_index < iterations % rounds)
            turns[key].append(timed_turn(run, warmup if round_index == 0 else 1, share, budget, settle))
    return turns


def time_alternating(runs: Mapping[Key, Callable[[], object]], iterations: int, time_budget_s: float | None = None,
                     warmup: int = 1, settle_s: float = BLOCK_SETTLE_S, block_s: float = BLOCK_TIMED_S,
                     settled_run_s: float = SETTLED_RUN_S) -> dict[Key, list[list[float]]]:
    """Seconds of each run in cycles of one block per key (untimed runs for `settle_s`, then timed
    runs for `block_s`, at least one of each; the cycle's other blocks time as many runs as its
    first), as one turn per block for `paired_ratio`.

    A key whose last block's runs all lasted `settled_run_s` or more opens its next block with no
    untimed run: the first-run effect is the other model's data leaving the caches, milliseconds
    at most, and a run that long (224 px, batch 32: ~100 ms) would spend half the cycle's time
    untimed, so a second of blocks paired only two or three cycles and the rounds spread.

    The order reverses every other cycle (a b, b a, a b, ...) so neither key always runs first
    after the other. At most `iterations` timed runs per key; `time_budget_s` is per key (the
    cycles share len(runs) times it), and at least one cycle runs. `warmup` untimed runs per key
    open. Only fair for runs that leave the cores idle between calls (ONNX Runtime sessions that
    stop spinning when a run ends): see the module's docstring.
    """
    keys = list(runs)
    for _ in range(warmup):
        for key in keys:
            runs[key]()
    cycles: dict[Key, list[list[float]]] = {key: [] for key in keys}
    deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s * len(keys)
    done = 0

    def opening(key: Key) -> tuple[int, float]:
        """(untimed runs, untimed seconds) opening the key's next block."""
        settled = bool(cycles[key]) and min(cycles[key][-1]) >= settled_run_s
        return (0, 0.0) if settled else (1, settle_s)

    while done < iterations and (deadline is None or time.perf_counter() < deadline or not done):
        first, *rest = keys if len(cycles[keys[0]]) % 2 == 0 else keys[::-1]
        untimed, seconds = opening(first)
        cycles[first].append(timed_turn(runs[first], untimed, iterations - done, block_s, seconds))
        share = len(cycles[first][-1])  # the cycle's other blocks time as many runs as its first
        for key in rest:
            untimed, seconds = opening(key)
            cycles[key].append(timed_turn(runs[key], untimed, share, None, seconds))
        done += share
    return cycles


def time_in_turns(runs: Mapping[Key, Callable[[], object]], rounds: int, iterations: int,
                  time_budget_s: float | None = None, warmup: int = 1, switch_warmup_s: float = SWITCH_WARMUP_S,
                  progress: Callable[[Key, int], None] | None = None) -> dict[Key, list[float]]:
    """Seconds of each run, pooled over its turns (`time_turns`)."""
    turns = time_turns(runs, rounds, iterations, time_budget_s, warmup, switch_warmup_s, progress)
    return {key: [t for turn in key_turns for t in turn] for key, key_turns in turns.items()}


def paired_ratio(turns: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> float:
    """Median over turns of (median time in a turn / the reference's median time in the same turn).

    Why paired: on this 2-core VM the machine's speed drifts over seconds (rounds of the same two
    files, 1 s apart, gave 0.77x to 1.34x at 64 px, 1 thread); a turn and the reference's turn
    next to it share the drift, so each turn's ratio cancels it and the median drops the turns a
    drift split. With one turn it is the ratio of the two medians.
    """
    ratios = [float(np.median(own)) / float(np.median(ref)) for own, ref in zip(turns, reference) if own and ref]
    if not ratios:
        raise ValueError("paired_ratio needs at least one turn with times on both sides")
    return float(np.median(ratios))


def median_interval(values: Sequence[float], confidence: float = 0.8) -> tuple[float, float]:
    """A distribution-free interval that holds the median of what `values` sample with at least
    `confidence`: the order statistics x(j+1) and x(n-j), for the largest j that keeps
    1 - 2 P(Binomial(n, 1/2) <= j) >= confidence (min..max when none does). No normal assumption:
    round ratios here are skewed (a slow phase only ever slows a round down)."""
    if not values:
        raise ValueError("median_interval needs at least one value")
    ordered, n = sorted(values), len(values)

    def coverage(j: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(j + 1)) / 2.0 ** n

    j = 0
    while j + 1 <= (n - 1) // 2 and coverage(j + 1) >= confidence:
        j += 1
    return ordered[j], ordered[n - 1 - j]


def prediction_bound(values: Sequence[float], confidence: float = PREDICTION_CONFIDENCE) -> float:
    """An upper bound that one more draw of what `values` sample stays under with probability at least
    `confidence`: the order statistic x(k), k = ceil(confidence (n + 1)), since a new draw is equally
    likely to fall in each of the n + 1 gaps the sorted values leave (exchangeability; no normal
    assumption). With too few values for that confidence (k > n) it is the largest value, the best
    the values can say. Why not the median's interval: a budget is kept by every timing a user
    takes, not by the median over many; a plan passed on its median's bound (1.23x) was benched
    once at 1.28x against 1.25x, inside its own rounds' spread (1.16-1.30x)."""
    if not values:
        raise ValueError("prediction_bound needs at least one value")
    ordered = sorted(values)
    k = min(len(ordered), math.ceil(round(confidence * (len(ordered) + 1), 9)))
    return ordered[k - 1]
