"""Interleaved timing turns (qdeploy/timing.py): order, settling after a switch, budgets."""

from __future__ import annotations

import time

import numpy as np
import pytest

from qdeploy.timing import median_interval, paired_ratio, prediction_bound, time_alternating, time_in_turns, time_turns, timed_turn


def _recorder(log: list[str], key: str, seconds: float = 0.0):
    def run() -> None:
        log.append(key)
        if seconds:
            time.sleep(seconds)
    return run


def test_turns_interleave_keys_and_pool_a_share_of_the_runs_each() -> None:
    log: list[str] = []
    times = time_in_turns({"a": _recorder(log, "a"), "b": _recorder(log, "b")}, rounds=3, iterations=6,
                          warmup=2, switch_warmup_s=0.0)
    assert [len(times["a"]), len(times["b"])] == [6, 6]  # 2 timed runs per turn, 3 turns
    # first turns: 2 untimed + 2 timed; later turns: 1 untimed + 2 timed; keys alternate turn by turn
    assert log == ["a"] * 4 + ["b"] * 4 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3


def test_every_turn_settles_after_a_switch_before_timing() -> None:
    log: list[str] = []
    time_in_turns({"a": _recorder(log, "a", 0.002), "b": _recorder(log, "b", 0.002)}, rounds=2, iterations=2,
                  warmup=0, switch_warmup_s=0.03)
    turns = [run for run in "".join(log).replace("ab", "a|b").replace("ba", "b|a").split("|")]
    assert len(turns) == 4
    assert all(len(turn) >= 1 + 0.03 / 0.004 for turn in turns)  # >= 30 ms of 2-3 ms runs, then 1 timed


def test_one_key_needs_no_settling_and_a_budget_still_times_one_run() -> None:
    log: list[str] = []
    times = time_in_turns({"a": _recorder(log, "a", 0.01)}, rounds=1, iterations=100, time_budget_s=0.0,
                          warmup=0, switch_warmup_s=10.0)
    assert len(times["a"]) == 1 and len(log) == 1
    assert len(timed_turn(_recorder([], "x"), warmup=0, iterations=5)) == 5


def test_turns_are_kept_apart_for_pairing() -> None:
    log: list[str] = []
    turns = time_turns({"a": _recorder(log, "a"), "b": _recorder(log, "b")}, rounds=3, iterations=7,
                       warmup=0, switch_warmup_s=0.0)
    assert [len(turn) for turn in turns["a"]] == [3, 2, 2]  # 7 runs shared out over 3 turns
    pooled = time_in_turns({"a": _recorder([], "a")}, rounds=3, iterations=7, warmup=0)
    assert len(pooled["a"]) == 7


def test_alternation_runs_blocks_in_reversing_order_timing_only_their_settled_runs() -> None:
    log: list[str] = []
    cycles = time_alternating({"a": _recorder(log, "a"), "b": _recorder(log, "b")}, iterations=3, warmup=1,
                              settle_s=0.0, block_s=0.0)
    # one warm-up run each, then blocks of one untimed and one timed run, order reversing
    assert "".join(log) == "ab" + "aabb" + "bbaa" + "aabb"
    assert [len(block) for block in cycles["a"]] == [1, 1, 1] and len(cycles["b"]) == 3
    budgeted = time_alternating({"a": _recorder([], "a", 0.01), "b": _recorder([], "b", 0.01)}, iterations=10_000,
                                time_budget_s=0.0, warmup=0, settle_s=0.0, block_s=0.0)
    assert len(budgeted["a"]) == len(budgeted["b"]) == 1  # a spent budget still times one cycle
    # blocks of 1 ms runs: about 5 untimed then 5 timed; 6 runs asked for cut the second block to 1
    log.clear()
    other: list[str] = []
    blocks = time_alternating({"a": _recorder(log, "a", 0.001), "b": _recorder(other, "b", 0.001)}, iterations=6,
                              warmup=0, settle_s=0.005, block_s=0.005)
    assert sum(len(block) for block in blocks["a"]) == 6 and 2 <= len(blocks["a"][0]) <= 6  # sleep overshoots
    assert [len(block) for block in blocks["b"]] == [len(block) for block in blocks["a"]]  # paired blocks match
    assert len(log) >= 6 + 2 * len(blocks["a"]) and len(other) >= 6 + 2 * len(blocks["b"])  # settling: several
    timed = time_alternating({"a": _recorder([], "a", 0.004), "b": _recorder([], "b", 0.002)}, iterations=10_000,
                             time_budget_s=0.05, warmup=0, settle_s=0.0, block_s=0.0)
    assert 3 <= len(timed["a"]) <= 20  # 0.1 s of 12 ms cycles (sleep overshoots on a loaded machine)
    assert 1.3 < paired_ratio(timed["a"], timed["b"]) < 3.0  # block by block: about 2


def test_every_block_of_an_alternation_settles_first(monkeypatch) -> None:
    import qdeploy.timing as timing

    calls: list[tuple[int, float]] = []
    real = timing.timed_turn
    monkeypatch.setattr(timing, "timed_turn", lambda run, warmup, iterations, budget=None, settle=0.0: (
        calls.append((warmup, settle)) or real(run, warmup, iterations, budget, settle)))
    time_alternating({"a": _recorder([], "a"), "b": _recorder([], "b")}, iterations=4, warmup=0, settle_s=0.003,
                     block_s=0.0)
    assert calls == [(1, 0.003)] * 8  # 4 cycles x 2 keys, every block: an untimed run and the settling time


def test_a_key_whose_runs_outlast_the_settling_opens_its_later_blocks_timed(monkeypatch) -> None:
    import qdeploy.timing as timing

    calls: list[tuple[str, int, float]] = []
    real = timing.timed_turn
    monkeypatch.setattr(timing, "timed_turn", lambda run, warmup, iterations, budget=None, settle=0.0: (
        calls.append((run.__name__, warmup, settle)) or real(run, warmup, iterations, budget, settle)))

    def slow() -> None:
        time.sleep(0.02)

    def fast() -> None:
        pass

    time_alternating({"slow": slow, "fast": fast}, iterations=3, warmup=0, settle_s=0.003, block_s=0.0,
                     settled_run_s=0.015)
    # slow's first block settles (nothing timed yet), its later ones open timed; fast's always settle
    assert [call for call in calls if call[0] == "slow"] == [("slow", 1, 0.003)] + [("slow", 0, 0.0)] * 2
    assert [call for call in calls if call[0] == "fast"] == [("fast", 1, 0.003)] * 3


def test_paired_ratio_is_the_median_of_each_turns_ratio() -> None:
    # A slow phase hit b's second and third turns and a's third: pooled medians would give
    # 1.1 / 2.0 = 0.55; turn by turn the ratios are 1.1, 0.55 and 2.5, median 1.1.
    own = [[1.1, 1.1, 1.1], [1.1, 1.1, 1.1], [5.0, 5.0, 5.0]]
    reference = [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    assert paired_ratio(own, reference) == pytest.approx(1.1)
    assert paired_ratio([[3.0, 1.0, 2.0]], [[4.0]]) == pytest.approx(0.5)  # one turn: ratio of medians
    with pytest.raises(ValueError, match="at least one turn"):
        paired_ratio([[]], [[1.0]])


def test_median_interval_widens_to_the_coverage_asked_for() -> None:
    # n = 5: only min..max covers 80% (93.75%); n = 9: x(3)..x(7) covers 82%; n = 11: x(3)..x(9) 93.5%
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) == (1.0, 5.0)
    assert median_interval([float(v) for v in range(1, 10)]) == (3.0, 7.0)
    assert median_interval([float(v) for v in range(1, 12)]) == (3.0, 9.0)
    assert median_interval([float(v) for v in range(1, 12)], confidence=0.7) == (4.0, 8.0)
    assert median_interval([2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])


def test_prediction_bound_is_the_order_statistic_one_more_draw_stays_under() -> None:
    # k = ceil(0.8 (n + 1)): n = 5 -> the 5th (max); n = 9 -> the 8th; n = 11 -> the 10th
    assert prediction_bound([5.0, 1.0, 4.0, 2.0, 3.0]) == 5.0
    assert prediction_bound([float(v) for v in range(9, 0, -1)]) == 8.0
    assert prediction_bound([float(v) for v in range(1, 12)]) == 10.0
    assert prediction_bound([float(v) for v in range(1, 12)], confidence=0.5) == 6.0
    assert prediction_bound([2.0, 1.0]) == 2.0  # too few for 80%: the largest
    with pytest.raises(ValueError, match="at least one value"):
        prediction_bound([])
    # it holds for one more draw of a skewed distribution (slow phases only slow a round down):
    # 9 rounds give an 8/10 bound, so 80% of new draws land at or under it, whatever the shape
    rng = np.random.default_rng(0)
    draws = 1.0 + rng.lognormal(-3.0, 0.8, size=(4000, 10))
    under = np.mean([draw[9] <= prediction_bound(list(draw[:9])) for draw in draws])
    assert 0.78 <= under <= 0.82
    # the median's 80% interval (x(3)..x(7) of 9) is no such bound: about 1 draw in 3 lands above it
    above_median_bound = np.mean([draw[9] > median_interval(list(draw[:9]))[1] for draw in draws])
    assert above_median_bound > 0.25
