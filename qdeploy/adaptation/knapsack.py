"""Which layers to adapt under a latency budget: a 0/1 knapsack over measured costs.

Each candidate layer has a cost (the share of the base model's latency its quadratic term
adds, measured on the target backend; the largest over the batch sizes, so the budget holds
at every batch) and a benefit score (scores.py). The chosen set maximises the summed score
with the summed cost within the budget's slack (`budget - 1`). Costs are rounded *up* to a
grid of `resolution` steps of the slack, so a set the solver accepts never exceeds it.

With the primary trained, every term competes with the pretrained weights for the same training
time: `choose_rate` maximises the first-step loss decrease per second of a training step
instead (a fractional objective, solved by Dinkelbach's iteration over the same knapsack).

Both objectives are first-order models of what a term buys; `proposals` lists an objective's
best few sets for short measured trials to decide between (training/set_trials.py).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Mapping, Sequence

from qdeploy.errors import QDeployError

RESOLUTION = 2000  # grid steps over the slack: exact enough for ~100 layers, microseconds to solve


def check_budget(budget: float) -> float:
    """The slack a budget leaves (`budget - 1`), or one line for a budget below 1.0."""
    if not math.isfinite(budget) or budget < 1.0:
        raise QDeployError(f"--latency-budget is the adapted/base latency ratio and must be >= 1.0 "
                           f"(e.g. 1.10 for 10% slower), got {budget}")
    return budget - 1.0


def choose(costs: Mapping[str, float], scores: Mapping[str, float], budget: float,
           resolution: int = RESOLUTION) -> list[str]:
    """The layers (in the order of `costs`) of highest total score whose costs sum to <= budget - 1.

    Ties between sets of equal score go to the cheaper one. A layer with no cost (<= 0) is
    always taken when its score is positive.
    """
    slack = check_budget(budget)
    names = list(costs)
    free = [n for n in names if costs[n] <= 0 and scores[n] > 0]
    paid = [n for n in names if costs[n] > 0 and scores[n] > 0]
    if slack == 0 or not paid:
        return [n for n in names if n in free]
    unit = slack / resolution
    weights = {n: math.ceil(costs[n] / unit - 1e-9) for n in paid}
    # best[c] = (score, -weight, chosen) of the best set using at most c units
    best: list[tuple[float, int, tuple[str, ...]]] = [(0.0, 0, ())] * (resolution + 1)
    for name in paid:
        weight, score = weights[name], scores[name]
        if weight > resolution:
            continue
        for capacity in range(resolution, weight - 1, -1):
            prior = best[capacity - weight]
            candidate = (prior[0] + score, prior[1] - weight, prior[2] + (name,))
            if candidate[:2] > best[capacity][:2]:
                best[capacity] = candidate
    chosen = set(best[resolution][2]) | set(free)
    return [n for n in names if n in chosen]


def choose_most(costs: Mapping[str, float], scores: Mapping[str, float], budget: float) -> list[str]:
    """The most layers whose costs fit `budget - 1`, ties by summed score: the last-k rule's reach with the
    score's preference. The score knapsack can spend the whole slack on one dear early layer (a high
    share, a high cost); measured, two cheap ones trained better (docs/hardware-aware.md), so trials
    get this set to try too."""
    total = sum(max(scores[n], 0.0) for n in costs) or 1.0
    return choose(costs, {n: 1.0 + 0.5 * max(scores[n], 0.0) / total for n in costs}, budget)


MAX_RATE_ITERATIONS = 20  # Dinkelbach's iteration ends in a few; a bound against float ties


def choose_rate(costs: Mapping[str, float], gains: Mapping[str, float], step_costs: Mapping[str, float],
                base_gain: float, base_step: float, budget: float) -> list[str]:
    """The layers (in the order of `costs`), with summed latency costs <= budget - 1, that maximise
    (base_gain + summed gains) / (base_step + summed step costs): the loss a training step lowers
    per second of it, when the primary (`base_gain` in a `base_step` without terms) trains too.

    A layer pays only when its gain per added step second beats the whole set's rate, so cheap
    late layers can win over a high-gain early one whose backward pass is dear. When no layer
    raises the rate, the one that lowers it least is taken: the caller asked for quadratic terms.
    Dinkelbach: with rate r, the knapsack over values gain - r * step_cost finds a set of higher
    rate, or proves that none exists.
    """
    slack = check_budget(budget)
    rate, chosen = base_gain / base_step, []
    for _ in range(MAX_RATE_ITERATIONS):
        again = choose(costs, {n: gains[n] - rate * step_costs[n] for n in costs}, budget)
        better = (base_gain + sum(gains[n] for n in again)) / (base_step + sum(step_costs[n] for n in again))
        if not again or better <= rate:
            break
        chosen, rate = again, better
    if chosen:
        return chosen
    fits = [n for n in costs if costs[n] <= slack]
    return [max(fits, key=lambda n: (base_gain + gains[n]) / (base_step + step_costs[n]))] if fits else []


def cheapest(costs: Mapping[str, float]) -> tuple[str, float]:
    """(name, cost) of the cheapest layer: what an unreachable budget's error reports."""
    name = min(costs, key=costs.__getitem__)
    return name, costs[name]


Solver = Callable[[Mapping[str, float]], list[str]]  # costs (a subset of the candidates) -> the set it chooses


def proposals(solver: Solver, costs: Mapping[str, float], count: int) -> list[list[str]]:
    """Up to `count` distinct sets `solver` chooses: its best, then (breadth first) its choice with each
    layer of an earlier proposal left out in turn, and so on (Lawler's branching, without forced
    layers): good alternatives that differ from the best by a layer or two, for trials to decide.
    """
    first = solver(costs)
    found, queue = ([first], [(first, frozenset())]) if first else ([], [])
    while queue and len(found) < count:
        chosen, excluded = queue.pop(0)
        for name in chosen:
            left_out = excluded | {name}
            again = solver({n: c for n, c in costs.items() if n not in left_out})
            if again and again not in found:
                found.append(again)
                queue.append((again, left_out))
                if len(found) == count:
                    break
    return found


def merged_proposals(solvers: Sequence[Solver], costs: Mapping[str, float], count: int) -> list[list[str]]:
    """Up to `count` distinct sets taken in turn from each solver's proposals (the first solver's best first)."""
    lists = [proposals(solver, costs, count) for solver in solvers]
    merged: list[list[str]] = []
    for layer_set in itertools.chain.from_iterable(itertools.zip_longest(*lists)):
        if layer_set is not None and layer_set not in merged:
            merged.append(layer_set)
    return merged[:count]
