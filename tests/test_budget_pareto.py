"""benchmarks/budget_pareto.py --quick: every stage runs and its JSON, tables and plot read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 6 exports and 6 short training runs: ~2 min alone, 8 min on the shared 2 cores
def test_quick_mode_runs_every_stage(tmp_path) -> None:
    out = tmp_path / "pareto.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "budget_pareto.py"), "--quick", "--runs",
                             str(tmp_path / "runs"), "--json", str(out)], capture_output=True, text=True,
                            cwd=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
                                               "PATH": "/usr/bin:/bin", "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (data,) = report["results"]
    runs = [(row["run"], row["primary"]) for row in data["rows"]]
    assert runs[:5] == [("finetune", "-"), ("lora", "-"), ("all", "trained"), ("budget 1.50", "trained"),
                        ("last-k", "trained")]
    plan = data["plans"]["trained"]["1.50"]
    assert plan["train_primary"] and plan["training"]["base_step_ms"] > 0  # planned for the mode it trains
    assert [row for row in data["rows"] if row["run"] == "budget 1.50"][0]["targets"] == plan["chosen"]
    # a random row only where a subset other than the plan's own fits its cost (test_random_subsets_...)
    assert all(row["targets"] != plan["chosen"] for row in data["rows"] if row["run"].startswith("random"))
    assert all(row["latency_ratio"]["1"] > 0 and row["steps"] >= 1 for row in data["rows"])
    # equal time as steps: each run took the preset's seconds over its configuration's timed step
    for row in data["rows"]:
        assert row["steps"] == max(1, round(60 * data["preset"]["minutes"] / row["step_s"]))
    assert set(data["goals"]["trained"]) >= {"accuracy_minus_all", "accuracy_minus_best_random", "step_time_vs_finetune"}
    # every row keeps its evaluations (the equal-steps view reads them): the last one is the run's final accuracy
    assert all(row["curve"][-1] == [row["steps"], row["final_val_acc"]] for row in data["rows"])
    assert data["goals"]["trained"]["equal_steps"]["steps"] >= 1 and "@ steps" in result.stdout
    assert Path(data["plot"]).is_file() and "best val accuracy at equal training time" in result.stdout


def test_goals_quick_times_the_plan_and_an_unreachable_budget_is_a_row(tmp_path) -> None:
    def goals(*extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        out = tmp_path / f"goals{len(extra)}.json"
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "budget_pareto.py"), "--goals", "--quick",
                               "--candidates", "blocks.6.*.conv_dw", "blocks.5.0.conv_dw", "--runs",
                               str(tmp_path / "runs"), "--json", str(out), *extra], capture_output=True, text=True,
                              cwd=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
                                                 "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "100"})
        assert done.returncode == 0, done.stderr[-3000:]
        return done, json.loads(out.read_text())["goals"]

    _, (row,) = goals()
    assert row["size"] == 32 and row["layers"] and set(row["independent"]) == set(row["plan_measured"])
    assert set(row["deployed"]) == set(row["plan_measured"]) and all(r > 0 for r in row["deployed"].values())
    assert row["plan_checks"][-1]["chosen"] == row["layers"]
    first, last = min(row["independent"], key=int), max(row["independent"], key=int)
    assert row["passed"] == (row["independent"][first] <= 1.5 and row["independent"][last] <= 1.6)
    done, (row,) = goals("--goal-budget", "1.0001")
    assert row["layers"] == [] and not row["passed"] and "is unreachable" in row["unreachable"]
    assert "unreachable" in done.stdout


def test_random_subsets_are_distinct_and_differ_from_the_budgets_choice() -> None:
    from types import SimpleNamespace

    from tests.conftest import load_module

    layer_sets = load_module("budget_pareto", ROOT / "benchmarks" / "budget_pareto.py").layer_sets
    names = [f"l{i}" for i in range(6)]
    costs = [0.04, 0.04, 0.08, 0.2, 0.2, 0.2]  # within the 0.10 slack: {l0}, {l1}, {l2}, {l0, l1}
    plan = SimpleNamespace(layers=[{"name": n, "cost": c, "cost_by_batch": {"1": c}} for n, c in zip(names, costs)],
                           chosen=["l0"], trials=None, checks=[])
    sets = layer_sets({1.1: plan}, names, names, 1.1, randoms=5, seed=0)
    randoms = [tuple(layers) for run, layers in sets.items() if run.startswith("random")]
    # filled to the budget's slack, not to the plan's cost (one cheap layer: no other set would fit it);
    # l0 alone is the budget's own choice; no repeats, so fewer than asked
    assert set(randoms) <= {("l0", "l1"), ("l1",), ("l2",)} and len(randoms) == len(set(randoms)) >= 2
    assert sets["last-k"] == ["l2"] and sets["budget 1.10"] == ["l0"] and "trials' best" not in sets
    plan.trials = {"sets": [["l0"], ["l1", "l2"]], "ranking": [1, 0]}  # the check turned the trials' best down
    assert layer_sets({1.1: plan}, names, names, 1.1, randoms=1, seed=0)["trials' best"] == ["l1", "l2"]
    plan.trials["ranking"] = [0, 1]  # the plan is the trials' best: no extra row
    assert "trials' best" not in layer_sets({1.1: plan}, names, names, 1.1, randoms=1, seed=0)
    plan.trials = None
    # filled to the plan's own cost (0.04): only the other 0.04 layer is a distinct set of that cost
    same_cost = layer_sets({1.1: plan}, names, names, 1.1, randoms=5, seed=0, fill_to="plan")
    assert [v for k, v in same_cost.items() if k.startswith("random")] == [["l1"]] and same_cost["last-k"] == ["l1"]


def test_random_sets_fill_the_slack_at_the_costs_the_plans_checks_measured() -> None:
    from types import SimpleNamespace

    from tests.conftest import load_module

    module = load_module("budget_pareto", ROOT / "benchmarks" / "budget_pareto.py")
    names = [f"l{i}" for i in range(4)]
    layers = [{"name": n, "cost": 0.025, "cost_by_batch": {"1": 0.025, "32": 0.02}} for n in names]
    # the plan's checks: four layers predicted 1.10x measured 1.20x (b1), then two predicted 1.05x measured 1.09x
    checks = [{"chosen": names, "measured": {"1": 1.20, "32": 1.1}},
              {"chosen": ["l0", "l1"], "measured": {"1": 1.09, "32": 1.03}}]
    plan = SimpleNamespace(layers=layers, chosen=["l0", "l1"], trials=None, checks=checks)
    assert module.measured_cost_scale(plan) == pytest.approx(2.0)  # 0.20 / 0.10 at batch 1 is the largest
    sets = module.layer_sets({1.1: plan}, names, names, 1.1, randoms=3, seed=0)
    # at profiled costs four layers fit 0.10; at twice them, two (as many as the plan kept)
    assert sets["last-k"] == ["l2", "l3"] and all(len(v) == 2 for k, v in sets.items() if k.startswith("random"))
    plan.checks = [{"chosen": ["l0"], "measured": {"1": 1.01, "32": 1.0}}]  # costs measured high: not scaled down
    assert module.measured_cost_scale(plan) == 1.0


def test_goals_compare_means_over_seeds_and_count_the_seeds_the_budget_wins() -> None:
    from tests.conftest import load_module

    goals = load_module("budget_pareto", ROOT / "benchmarks" / "budget_pareto.py").goals

    def row(run: str, primary: str, seed: int, acc: float, step_s: float = 0.1, b1: float = 1.05,
            steps: int = 40, early: float = 0.5) -> dict:
        # evaluated every 10 steps: `early` up to step 30, `acc` from 40 on
        return {"run": run, "primary": primary, "seed": seed, "best_val_acc": acc, "step_s": 0.3, "steps": steps,
                "train_seconds": step_s * steps, "latency_ratio": {"1": b1, "32": 1.02},
                "curve": [(step, early if step < 40 else acc) for step in range(0, steps + 1, 10)]}

    rows = [row("finetune", "-", 0, 0.90, 0.2), row("finetune", "-", 1, 0.92, 0.2),
            row("all", "trained", 0, 0.80, steps=20), row("all", "trained", 1, 0.84, steps=20),
            row("budget 1.10", "trained", 0, 0.95, 0.15, early=0.70),
            row("budget 1.10", "trained", 1, 0.93, 0.17, early=0.60),
            row("random 1", "trained", 0, 0.94, steps=35, early=0.50), row("random 1", "trained", 1, 0.90, steps=35),
            row("random 2", "trained", 0, 0.90, steps=35, early=0.62),
            row("random 2", "trained", 1, 0.94, steps=35, early=0.64),
            row("random 3", "trained", 0, 0.97, b1=1.13), row("random 3", "trained", 1, 0.97, b1=1.13)]
    goal = goals(rows, 1.10, eval_every=10)["trained"]
    assert goal["seeds"] == 2 and goal["accuracy_minus_all"] == pytest.approx(0.94 - 0.82)
    assert goal["accuracy_minus_best_random"] == pytest.approx(0.94 - 0.97)  # random 3, timed over the budget
    assert goal["accuracy_minus_best_random_within_budget"] == pytest.approx(0.94 - 0.92)  # 1 and 2 average 92%
    # paired: random 1 and 2 tie on the mean, max() keeps the first (random 1): differences 0.01 and 0.03
    assert goal["paired_se_within_budget"] == pytest.approx(0.01414 / 2 ** 0.5, abs=1e-4)
    assert goal["randoms_within_budget"] == 2 and goal["seeds_above_every_random"] == 0
    assert goal["accuracy_sd"] == pytest.approx(0.01414, abs=1e-4)
    # the runs' own steps (train seconds / steps over both seeds), not the timed 0.3 s
    assert goal["step_time_vs_finetune"] == pytest.approx(0.16 / 0.2)
    # equal steps: the fewest steps of a trained set other than all (35, random 1 and 2), down to the 10-step grid
    at = goal["equal_steps"]
    assert at["steps"] == 30
    assert at["accuracy_minus_best_random_within_budget"] == pytest.approx(0.65 - 0.63)  # random 2's 62 and 64%
    assert at["paired_se_within_budget"] == pytest.approx(0.06)  # +0.08 and -0.04 against random 2
    assert at["seeds_above_every_random"] == 1  # seed 1: 60% against random 2's 64%
    accuracy_at = load_module("budget_pareto", ROOT / "benchmarks" / "budget_pareto.py").accuracy_at
    assert accuracy_at(rows[2], 30) is None and accuracy_at(rows[4], 39) == 0.70 and accuracy_at(rows[4], 40) == 0.95
