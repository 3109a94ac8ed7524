"""Interleaved timing turns (qdeploy/timing.py): order, settling after a switch, budgets."""

from __future__ import annotations

import time

from qdeploy.timing import time_in_turns, timed_turn


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
