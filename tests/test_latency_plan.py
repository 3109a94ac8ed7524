"""Hardware-aware adaptation: targets from the CLI, the knapsack, zero-start scores, `qdeploy plan`."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from qdeploy.adaptation import adapt
from qdeploy.adaptation.knapsack import choose, choose_most, choose_rate, merged_proposals, proposals
from qdeploy.adaptation.scores import first_step_gains, gradient_scores, param_scores
from qdeploy.adaptation.targets import candidate_layers, default_targets, resolve_targets
from qdeploy.cli import main
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import load_base_model
from qdeploy.timing import median_interval, prediction_bound
from qdeploy.workflows.latency_plan import PlanOptions
from tests.train_helpers import TINY, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the knapsack ---------------------------------------------------------------------------

def test_knapsack_prefers_two_cheap_layers_to_one_dear_one() -> None:
    costs = {"a": 0.06, "b": 0.05, "c": 0.05}
    scores = {"a": 0.5, "b": 0.3, "c": 0.3}
    assert choose(costs, scores, 1.10) == ["b", "c"]  # 0.6 beats 0.5 at 0.10 of slack
    assert choose(costs, scores, 1.06) == ["a"]
    assert choose(costs, scores, 1.0) == []
    with pytest.raises(QDeployError, match="must be >= 1.0"):
        choose(costs, scores, 0.95)


def _instances(seed: int, layers: int):
    """30 random (names, costs, values, budget, fitting subsets) cases; a subset fits with the grid's round-ups."""
    rng = random.Random(seed)
    for _ in range(30):
        names = [f"l{i}" for i in range(layers)]
        costs = {n: rng.uniform(0.001, 0.08) for n in names}
        values = {n: rng.uniform(0.0, 1.0) for n in names}
        budget = 1 + rng.uniform(0.02, 0.2)
        fits = [subset for k in range(layers + 1) for subset in itertools.combinations(names, k)
                if sum(costs[n] for n in subset) <= (budget - 1) * (1 - layers / 2000)]
        yield rng, costs, values, budget, fits


def test_knapsack_matches_brute_force_and_never_exceeds_the_slack() -> None:
    for _, costs, scores, budget, fits in _instances(0, 8):
        chosen = choose(costs, scores, budget)
        assert sum(costs[n] for n in chosen) <= budget - 1 + 1e-12
        best = max(sum(scores[n] for n in subset) for subset in fits)
        assert sum(scores[n] for n in chosen) >= best - 1e-12


def test_choose_rate_maximises_gain_per_step_second_like_brute_force() -> None:
    for rng, costs, gains, budget, fits in _instances(1, 7):
        steps = {n: rng.uniform(0.01, 0.3) for n in costs}
        base_gain, base_step = rng.uniform(0.0, 3.0), rng.uniform(0.2, 1.0)

        def rate(subset) -> float:
            return (base_gain + sum(gains[n] for n in subset)) / (base_step + sum(steps[n] for n in subset))

        chosen = choose_rate(costs, gains, steps, base_gain, base_step, budget)
        if min(costs.values()) > budget - 1:
            assert chosen == []  # nothing fits (the plan says so before it chooses)
            continue
        assert chosen and sum(costs[n] for n in chosen) <= budget - 1 + 1e-12
        assert rate(chosen) >= max(rate(subset) for subset in fits if subset) - 1e-9


def test_choose_rate_takes_the_layer_that_lowers_the_rate_least_when_none_raises_it() -> None:
    # the primary lowers the loss at 30 per second; no term comes near (at most 20 per added second):
    # the cheap late layer "c" (gain 1 for 0.05 s) lowers the rate least, though "a" has the highest
    # gain and the score knapsack takes it
    costs, gains, steps = {"a": 0.08, "b": 0.03, "c": 0.04}, {"a": 3.0, "b": 0.5, "c": 1.0}, {"a": 0.6, "b": 0.05, "c": 0.05}
    assert choose(costs, gains, 1.10) == ["a"]
    assert choose_rate(costs, gains, steps, base_gain=30.0, base_step=1.0, budget=1.10) == ["c"]
    # a primary that learns nothing (frozen): "a" (3 in 1.6 s) beats "b" + "c" (1.5 in 1.1 s) again
    assert choose_rate(costs, gains, steps, base_gain=0.0, base_step=1.0, budget=1.10) == ["a"]
    # a primary at 10 per second: "c" (20 per added second) raises the rate, "b" (10) does not
    assert choose_rate(costs, gains, steps, base_gain=10.0, base_step=1.0, budget=1.10) == ["c"]


# ---- the benefit score ----------------------------------------------------------------------

def _tiny_adapted() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    adapt(model, ["0", "1"], config=QuadConfig(rank=2), count_model_flops=False)
    return model


def test_gradient_scores_are_the_first_adam_step_by_hand() -> None:
    """L1 of dL/dU (the zero projection) per layer, as shares, against the closed form."""
    model = _tiny_adapted()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    c = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    scores = gradient_scores(model, [(x, c)], lambda out, target: (out * target).sum())

    def product(layer, inputs):  # (A x) * (B x) of a quadratic linear layer
        return (layer.quad.a(inputs) * layer.quad.b(inputs)).detach().numpy()

    first, second = model[0], model[1]
    with torch.no_grad():
        hidden = first.primary(x)  # the zero term adds nothing
    xn, cn, w2 = x.numpy(), c.numpy(), second.primary.weight.detach().numpy()
    upstream = cn @ w2  # dL/d(first's output): second's term has zero U, so only its primary passes gradient
    raw = {"0": np.abs(upstream.T @ product(first, x)).sum() + np.abs(upstream.sum(0)).sum(),
           "1": np.abs(cn.T @ product(second, hidden)).sum() + np.abs(cn.sum(0)).sum()}
    assert xn.shape == (5, 4)
    total = raw["0"] + raw["1"]
    assert scores == pytest.approx({"0": raw["0"] / total, "1": raw["1"] / total}, rel=1e-5)
    assert sum(scores.values()) == pytest.approx(1.0)


def test_first_step_gains_measure_the_primary_in_the_same_norm_and_leave_the_model_as_it_was() -> None:
    model = _tiny_adapted()
    for param in model.parameters():  # a frozen primary: the gains still see it
        param.requires_grad_(False)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    c = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    loss_fn = lambda out, target: (out * target).sum()  # noqa: E731
    gains = first_step_gains(model, [(x, c)], loss_fn)
    zero = {id(p) for layer in (model[0], model[1]) for p in layer.quad.proj.parameters()}
    others = [p for p in model.parameters() if id(p) not in zero]
    for param in others:
        param.requires_grad_(True)
    loss_fn(model(x), c).backward()
    assert gains.primary == pytest.approx(sum(float(p.grad.abs().sum()) for p in others), rel=1e-5)
    assert gains.shares() == pytest.approx(gradient_scores(_tiny_adapted(), [(x, c)], loss_fn), rel=1e-6)
    assert not any(p.requires_grad for p in model.parameters() if id(p) in zero)  # flags as they were


def test_training_step_costs_time_the_base_step_and_each_term_alone() -> None:
    from qdeploy.training.step_costs import training_step_costs

    model = load_base_model(TINY, pretrained=False)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    names = resolve_targets(model, ["blocks.*.conv_dw"])[:2]
    costs = training_step_costs(model, names, QuadConfig(), batch_size=4, size=(32, 32), rounds=2)
    assert costs.base_s > 0 and list(costs.added_s) == names and all(t > 0 for t in costs.added_s.values())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())  # the model is left as it was


def test_without_data_the_score_is_the_added_parameters() -> None:
    model = _tiny_adapted()
    # per layer: A and B (in*2 + 2 each), U (2*out + out)
    first, second = 2 * (4 * 2 + 2) + (2 * 3 + 3), 2 * (3 * 2 + 2) + (2 * 2 + 2)
    assert param_scores(model) == pytest.approx({"0": first / (first + second), "1": second / (first + second)})


# ---- targets: every family, every wrappable layer --------------------------------------------

def test_mixer_defaults_skip_the_patchify_stem_and_export_with_parity(tmp_path) -> None:
    from qdeploy.adaptation import randomize_quadratic_terms
    from qdeploy.export import ExportOptions, export_model

    model = load_base_model("mixer_s16_224", pretrained=False, img_size=32, num_classes=10)
    assert "stem.proj" not in default_targets(model) and "stem.proj" not in candidate_layers(model)
    assert "head" not in candidate_layers(model)
    assert set(default_targets(model)) == {f"blocks.{i}.mlp_{kind}.fc1" for i in range(8) for kind in ("tokens", "channels")}
    adapt(model, input_size=(3, 32, 32))
    randomize_quadratic_terms(model)
    report = export_model(model, tmp_path / "onnx", ExportOptions(modes=("decomposed",), input_size=(32, 32), tune=False))
    assert report.files["decomposed"].passed and report.quadratic_layers == 16


def test_export_says_when_pytorch_itself_gives_nan(tmp_path) -> None:
    from qdeploy.export import ExportOptions, export_model

    model, _ = adapt(load_base_model(TINY, pretrained=False), input_size=(3, 32, 32))
    with torch.no_grad():
        model.get_classifier().weight.fill_(float("nan"))
    with pytest.raises(QDeployError, match="PyTorch model itself gives non-finite outputs"):
        export_model(model, tmp_path / "onnx", ExportOptions(modes=("decomposed",), input_size=(32, 32)))
    assert not (tmp_path / "onnx").exists()


def test_train_targets_are_recorded_in_the_run_and_the_model_folder(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", TINY, "--checkpoint", str(tiny_checkpoint(tmp_path / "weights")), "--image-size",
            "32", "--batch-size", "16", "--max-samples", "32", "--workers", "0", "--no-progress", "--max-steps", "1",
            "--out", str(out), "--targets", "blocks.4.*.conv_dw", "--targets", "conv_head"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    adapter = json.loads((out / "model" / "adapter.json").read_text())
    assert adapter["targets"] == ["blocks.4.0.conv_dw", "blocks.4.1.conv_dw", "blocks.4.2.conv_dw", "conv_head"]
    assert adapter["training"]["targets"] == ["blocks.4.*.conv_dw", "conv_head"]
    assert json.loads((out / "summary.json").read_text())["config"]["targets"] == ["blocks.4.*.conv_dw", "conv_head"]
    bad = CliRunner().invoke(main, [*args[:-4], "--out", str(tmp_path / "r2"), "--targets", "nope.*"])
    assert bad.exit_code == 2 and "target 'nope.*' matches no Conv2d/Linear module" in bad.output


# ---- qdeploy plan ---------------------------------------------------------------------------

def _plan(tmp_path, *extra: str):
    return CliRunner().invoke(main, ["plan", "efficientnet_lite0", "--input-size", "32", "--batch", "1",
                                     "--threads", "1", "--out", str(tmp_path / "plan.json"), *extra],
                              terminal_width=120)


def test_plan_measures_chooses_and_checks_within_budget(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = _plan(tmp_path, "--latency-budget", "1.5", "--candidates", "blocks.5.*.conv_dw",
                   "--candidates", "blocks.6.*.conv_dw")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    names = [layer["name"] for layer in plan["layers"]]
    assert names == [f"blocks.5.{i}.conv_dw" for i in range(4)] + ["blocks.6.0.conv_dw"]
    assert all(layer["cost"] > 0 and layer["params"] > 0 and layer["flops"] > 0 for layer in plan["layers"])
    assert sum(layer["score"] for layer in plan["layers"]) == pytest.approx(1.0)
    assert plan["chosen"] and set(plan["chosen"]) <= set(names)
    chosen_cost = sum(layer["cost_by_batch"]["1"] for layer in plan["layers"] if layer["name"] in plan["chosen"])
    assert plan["predicted"]["1"] == pytest.approx(1 + chosen_cost)
    rounds = plan["checks"][-1]["rounds"]["1"]  # one ratio per pair of freshly loaded sessions
    assert prediction_bound(rounds) <= 1.5  # the check ends with one more timing expected within budget
    options = PlanOptions()
    assert options.check_rounds <= len(rounds) <= options.check_max_rounds
    assert plan["measured"]["1"] == pytest.approx(float(np.median(rounds)))
    if len(rounds) < options.check_max_rounds:  # it stopped early only with the budget outside low..bound
        assert not median_interval(rounds)[0] <= 1.5 < prediction_bound(rounds)
    assert "latency plan: efficientnet_lite0 at 32x32 px" in result.output and "measured" in result.output
    assert f"{prediction_bound(rounds):.3f}x" in result.output.split("80% bound")[1]
    again = _plan(tmp_path, "--latency-budget", "1.5", "--candidates", "blocks.5.*.conv_dw",
                  "--candidates", "blocks.6.*.conv_dw")
    assert "(cached)" in again.output and json.loads((tmp_path / "plan.json").read_text())["chosen"] == plan["chosen"]


def test_a_trained_primary_plan_chooses_by_gain_per_training_step_second(tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.latency_plan as latency_plan
    from qdeploy.training.step_costs import StepCosts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    timed = {}

    def step_costs(model, candidates, quad, batch_size, size, seed=0, progress=None):  # a dear first layer
        timed.update(batch_size=batch_size, size=size)
        return StepCosts(0.5, {name: 0.4 if index == 0 else 0.01 * (index + 1) for index, name in enumerate(candidates)})

    monkeypatch.setattr(latency_plan, "training_step_costs", step_costs)
    # exports, profiles and the end-to-end check are test_plan_measures_chooses_and_checks_within_budget's
    calm = {"ratio": {"1": 1.01}, "rounds": {"1": [1.01] * 5}}
    monkeypatch.setattr(latency_plan, "check_plan", lambda *args: calm)
    monkeypatch.setattr(latency_plan, "export_plain_onnx", lambda model, path, size: path)

    def profiled(model, candidates, base_onnx, options, work, size):
        costs = {name: {"1": 0.02 * (index + 1)} for index, name in enumerate(candidates)}
        return {"1": 1.0}, costs, {name: {"1": cost["1"]} for name, cost in costs.items()}

    monkeypatch.setattr(latency_plan, "measure_costs", profiled)
    args = ("--latency-budget", "1.5", "--data", "digits-shift", "--candidates", "blocks.5.*.conv_dw",
            "--candidates", "blocks.6.*.conv_dw")
    result = _plan(tmp_path, *args, "--train-primary")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["train_primary"] and timed == {"batch_size": PlanOptions().score_batch_size, "size": (32, 32)}
    assert plan["training"]["base_step_ms"] == pytest.approx(500.0) and 0 < plan["training"]["primary_gain_share"] < 1
    layers = {layer["name"]: layer for layer in plan["layers"]}
    assert layers["blocks.5.0.conv_dw"]["train_step_ms"] == pytest.approx(400.0)
    share = plan["training"]["primary_gain_share"]  # gains in units of the summed layer gains
    expected = choose_rate({n: layer["cost"] for n, layer in layers.items()},
                           {n: layer["score"] for n, layer in layers.items()},
                           {n: layer["train_step_ms"] / 1000 for n, layer in layers.items()}, share / (1 - share),
                           0.5, 1.5)
    assert plan["checks"][0]["chosen"] == expected and "blocks.5.0.conv_dw" not in expected
    assert "gain per training-step second" in plan["score"] and "train step" in result.output
    (tmp_path / "plan.json").unlink()
    no_data = _plan(tmp_path, "--latency-budget", "1.5", "--train-primary")
    assert no_data.exit_code != 0 and "--train-primary weighs" in no_data.output and "pass --data" in no_data.output
    assert not (tmp_path / "plan.json").exists()
    frozen = _plan(tmp_path, *args)  # the same plan for a frozen primary: by score alone, no step timing
    assert frozen.exit_code == 0 and "train_step_ms" not in json.loads((tmp_path / "plan.json").read_text())["layers"][0]


def test_proposals_are_distinct_fitting_sets_from_the_best_then_with_its_layers_left_out() -> None:
    alternatives = 0
    for _, costs, scores, budget, fits in _instances(2, 7):
        solver = lambda c: choose(c, scores, budget)  # noqa: E731
        found = proposals(solver, costs, 4)
        assert found[0] == solver(costs) and len(found) <= 4
        assert len({tuple(s) for s in found}) == len(found)
        assert all(sum(costs[n] for n in s) <= budget - 1 + 1e-12 for s in found)
        left_out = found[0][0]  # the second proposal: the best set without the best's first layer
        best_without = max(sum(scores[n] for n in subset) for subset in fits if left_out not in subset)
        if best_without > 0:
            alternatives += 1
            assert left_out not in found[1] and sum(scores[n] for n in found[1]) >= best_without - 1e-12
    assert alternatives >= 25  # most instances have one
    costs, scores = {"a": 0.05, "b": 0.05, "c": 0.05}, {"a": 3.0, "b": 2.0, "c": 1.0}
    by_score = lambda c: choose(c, scores, 1.10)  # noqa: E731
    cheapest_one = lambda c: [min(c, key=scores.__getitem__)]  # noqa: E731
    assert proposals(by_score, costs, 3) == [["a", "b"], ["b", "c"], ["a", "c"]]
    assert merged_proposals([cheapest_one, by_score], costs, 3) == [["c"], ["a", "b"], ["b"]]  # in turns


def test_most_layers_takes_the_cheap_ones_the_score_knapsack_leaves_for_one_dear_layer() -> None:
    costs, scores = {"a": 0.06, "b": 0.03, "c": 0.03, "d": 0.04}, {"a": 0.7, "b": 0.1, "c": 0.05, "d": 0.15}
    assert choose(costs, scores, 1.10) == ["a", "d"]
    assert choose_most(costs, scores, 1.10) == ["b", "c", "d"]
    assert choose_most(costs, scores, 1.075) == ["b", "d"]  # two fit three ways: the higher score


def test_a_plan_with_trials_checks_the_best_tried_set_and_falls_back_in_trial_order(tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.latency_plan as latency_plan
    from qdeploy.training.set_trials import TrialRound

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tried = []

    def trials(model, data, size, quad, train_primary, batch_size, seed):  # a fixed ranking of the 4 proposals
        def run(sets, first_steps, pace):
            tried.append((list(map(list, sets)), first_steps, train_primary))
            assert pace is None  # equal steps with the primary frozen
            order = [0, 2, 1, 3]
            return order, [TrialRound(first_steps, {i: 1.0 + i for i in order}, {i: 0.5 for i in order})]
        return run

    monkeypatch.setattr(latency_plan, "set_trials", trials)
    monkeypatch.setattr(latency_plan, "export_plain_onnx", lambda model, path, size: path)
    checked = []

    def check(model, chosen, *args):  # the first set checked is over budget, every other one within
        checked.append(list(chosen))
        ratio = 1.121 if len(checked) == 1 else 1.01
        return {"ratio": {"1": ratio}, "rounds": {"1": [ratio] * 5}}

    monkeypatch.setattr(latency_plan, "check_plan", check)

    def profiled(model, candidates, base_onnx, options, work, size):  # sets of 2-4 layers fit the slack
        dear = ("blocks.5.3.conv_dw", "blocks.6.0.conv_dw")
        costs = {name: {"1": 0.05 if name in dear else 0.01} for name in candidates}
        return {"1": 1.0}, costs, {name: {"1": cost["1"]} for name, cost in costs.items()}

    monkeypatch.setattr(latency_plan, "measure_costs", profiled)
    result = _plan(tmp_path, "--latency-budget", "1.12", "--data", "digits-shift", "--trials", "4",
                   "--candidates", "blocks.5.*.conv_dw", "--candidates", "blocks.6.*.conv_dw")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    sets, first_steps, primary = tried[0]
    assert len(sets) == 4 and first_steps == PlanOptions().trial_steps and not primary
    assert plan["trials"]["sets"] == sets and plan["trials"]["ranking"] == [0, 2, 1, 3]
    layers = {layer["name"]: layer for layer in plan["layers"]}
    assert sets[0] == choose({n: layer["cost"] for n, layer in layers.items()},
                             {n: layer["score"] for n, layer in layers.items()}, 1.12)  # the objective's best
    assert checked[0] == sets[0]  # the trials' winner is checked first
    inflation = plan["checks"][0]["rechosen_with_costs_x"]
    fitting = [s for s in (sets[i] for i in (2, 1, 3))
               if sum(layers[n]["cost"] * inflation for n in s) <= 0.12 + 1e-12]
    assert sets[2] not in fitting  # the runner-up costs as much as the failed set: skipped
    assert fitting and plan["chosen"] == checked[1] == fitting[0]  # the best-ranked set that fits measured costs
    assert "trials: 4 proposed sets" in result.output
    no_data = _plan(tmp_path, "--latency-budget", "1.12", "--trials", "4")
    assert no_data.exit_code != 0 and "--trials trains" in no_data.output and "pass --data" in no_data.output


def test_an_ablation_plan_chooses_by_the_trained_terms_loss_rise(tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.latency_plan as latency_plan

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    scored = []

    def ablation(model, data, size, quad, train_primary, batch_size, seed, steps):  # rises by layer index
        def score(candidates):
            scored.append((list(candidates), train_primary, steps))
            return {name: [0.3, -0.02, 0.1, 0.0, 0.05][index] for index, name in enumerate(candidates)}
        return score

    monkeypatch.setattr(latency_plan, "ablation_scorer", ablation)
    monkeypatch.setattr(latency_plan, "data_scorer", lambda *args: pytest.fail("ablation needs no zero-start score"))
    monkeypatch.setattr(latency_plan, "training_step_costs", lambda *args, **kw: pytest.fail("no rate: no step costs"))
    monkeypatch.setattr(latency_plan, "export_plain_onnx", lambda model, path, size: path)
    monkeypatch.setattr(latency_plan, "check_plan", lambda *args: {"ratio": {"1": 1.01}, "rounds": {"1": [1.01] * 5}})

    def profiled(model, candidates, base_onnx, options, work, size):
        costs = {name: {"1": 0.02 * (index + 1)} for index, name in enumerate(candidates)}
        return {"1": 1.0}, costs, {name: {"1": cost["1"]} for name, cost in costs.items()}

    monkeypatch.setattr(latency_plan, "measure_costs", profiled)
    args = ("--latency-budget", "1.09", "--data", "digits-shift", "--candidates", "blocks.5.*.conv_dw",
            "--candidates", "blocks.6.*.conv_dw", "--scoring", "ablation")
    result = _plan(tmp_path, *args, "--train-primary")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    names = [f"blocks.5.{i}.conv_dw" for i in range(4)] + ["blocks.6.0.conv_dw"]
    assert scored == [(names, True, PlanOptions().scoring_steps)]  # the run's primary mode, trained once
    layers = {layer["name"]: layer for layer in plan["layers"]}
    assert [layers[n]["loss_rise"] for n in names] == [0.3, -0.02, 0.1, 0.0, 0.05]
    assert [layers[n]["score"] for n in names] == pytest.approx([0.3 / 0.45, 0.0, 0.1 / 0.45, 0.0, 0.05 / 0.45])
    assert plan["chosen"] == ["blocks.5.0.conv_dw", "blocks.5.2.conv_dw"] == choose(
        {n: layer["cost"] for n, layer in layers.items()}, {n: layer["score"] for n, layer in layers.items()}, 1.09)
    assert plan["training"] is None and "held-out loss rise when the term is zeroed" in plan["score"]
    no_data = _plan(tmp_path, "--latency-budget", "1.09", "--scoring", "ablation")
    assert no_data.exit_code != 0 and "--scoring ablation trains every candidate term" in no_data.output
    assert "pass --data" in no_data.output and len(no_data.output.strip().splitlines()) == 1


def test_train_plans_for_a_trained_primary_only_under_a_time_budget(monkeypatch) -> None:
    import qdeploy.training.model_setup as model_setup
    import qdeploy.workflows.latency_plan as latency_plan
    from qdeploy.training import TrainConfig

    seen: list[PlanOptions] = []
    monkeypatch.setattr(latency_plan, "plan_model", lambda model, options, name, progress=None: seen.append(options))
    monkeypatch.setattr(model_setup, "load_source", lambda config: load_base_model(TINY, pretrained=False))
    for minutes, primary in ((None, True), (2.0, True), (2.0, False)):
        latency_plan.plan_for_training(TrainConfig(train_primary=primary, max_minutes=minutes), PlanOptions())
    # epochs bound a run to the same steps whatever the terms cost: only a timed one trades them
    assert [options.train_primary for options in seen] == [False, True, False]


def test_an_int8_plan_times_the_int8_files_of_base_and_adapted(tmp_path, monkeypatch) -> None:
    from qdeploy.workflows import latency_plan

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    profiled = []
    profile = latency_plan.profile_onnx
    monkeypatch.setattr(latency_plan, "profile_onnx", lambda path, *a, **k: profiled.append(path) or profile(path, *a, **k))
    result = _plan(tmp_path, "--precision", "int8", "--latency-budget", "2.0", "--candidates", "blocks.6.0.conv_dw")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["precision"] == "int8" and plan["chosen"] == ["blocks.6.0.conv_dw"] and plan["measured"]["1"] > 0
    assert {path.name for path in profiled} == {"base.int8.onnx", "decomposed.int8.onnx"}
    assert "on ort-cpu (int8)" in result.output
    wrong = _plan(tmp_path, "--precision", "fp16")
    assert wrong.exit_code == 2 and "'fp16' is not one of 'fp32', 'int8'" in wrong.output


def test_in_precision_quantizes_as_the_export_does(tmp_path) -> None:
    import onnx

    from qdeploy.export.base_model import export_plain_onnx
    from qdeploy.workflows.latency_plan import in_precision

    fp32 = export_plain_onnx(load_base_model(TINY, pretrained=False).eval(), tmp_path / "base.onnx", (3, 32, 32))
    assert in_precision(fp32, "fp32", (32, 32)) == fp32
    int8 = in_precision(fp32, "int8", (32, 32))
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert int8.name == "base.int8.onnx" and {"QuantizeLinear", "DequantizeLinear"} <= ops
    with pytest.raises(QDeployError, match="unknown plan precision 'fp16'; use fp32 or int8"):
        in_precision(fp32, "fp16", (32, 32))


def test_plan_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, monkeypatch) -> None:
    import qdeploy

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    vit = tmp_path / "vit"
    qdeploy.save(load_base_model("vit_tiny_patch16_224", pretrained=False), vit)
    cases = [
        (["--latency-budget", "0.9"], "must be >= 1.0"),
        (["--backend", "ort-cuda"], "backend ort-cuda is not installed here"),
        (["--candidates", "nope.*"], "target 'nope.*' matches no Conv2d/Linear module"),
        (["--latency-budget", "1.0001", "--candidates", "blocks.6.0.conv_dw"],
         "unreachable: the cheapest layer, blocks.6.0.conv_dw, alone costs"),
    ]
    for extra, message in cases:
        result = _plan(tmp_path, *extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1
    size = CliRunner().invoke(main, ["plan", str(vit), "--input-size", "32", "--out", str(tmp_path / "plan.json")])
    assert size.exit_code == 2 and "fails at input size (3, 32, 32)" in size.output, size.output
    assert not (tmp_path / "plan.json").exists()


def test_qdeploy_adapt_with_a_budget_goes_through_the_plan() -> None:
    import qdeploy
    from qdeploy.adaptation import quadratic_layers

    model = load_base_model(TINY, pretrained=False)
    with pytest.raises(QDeployError, match="must be >= 1.0"):
        qdeploy.adapt(model, latency_budget=0.95, input_size=(32, 32))
    assert not quadratic_layers(model)  # refused before anything changed
    expected = resolve_targets(load_base_model(TINY, pretrained=False), None)
    _, report = qdeploy.adapt(model, input_size=(32, 32))  # no budget: the family's defaults, as before
    assert report.layers == expected and list(quadratic_layers(model)) == expected and report.plan is None


def test_train_and_adapt_hand_trials_and_scoring_to_the_plan(monkeypatch, tmp_path) -> None:
    import qdeploy
    import qdeploy.workflows.latency_plan as latency_plan

    seen: list[PlanOptions] = []

    def stop(*args, **kwargs):  # the options reached the plan: nothing more is needed
        seen.append(next(a for a in args if isinstance(a, PlanOptions)))
        raise QDeployError("planned")

    monkeypatch.setattr(latency_plan, "plan_for_training", stop)
    monkeypatch.setattr(latency_plan, "plan_model", stop)
    out = ["--out", str(tmp_path / "run")]
    for option, value in (("--plan-trials", "3"), ("--plan-scoring", "ablation")):
        alone = CliRunner().invoke(main, ["train", option, value, *out])
        assert alone.exit_code != 0 and f"{option} is a setting of the latency plan; add --latency-budget" in alone.output
    planned = CliRunner().invoke(main, ["train", "--latency-budget", "1.1", "--plan-trials", "3", *out])
    assert "planned" in planned.output and seen[-1].trials == 3 and seen[-1].scoring == PlanOptions().scoring
    planned = CliRunner().invoke(main, ["train", "--latency-budget", "1.1", "--plan-scoring", "ablation", *out])
    assert "planned" in planned.output and seen[-1].scoring == "ablation" and seen[-1].trials == PlanOptions().trials
    with pytest.raises(QDeployError, match="planned"):
        qdeploy.adapt(load_base_model(TINY, pretrained=False), latency_budget=1.1, data="digits-shift", trials=4,
                      scoring="ablation", input_size=(32, 32))
    assert seen[-1].trials == 4 and seen[-1].data == "digits-shift" and seen[-1].scoring == "ablation"
    assert not (tmp_path / "run").exists()


def test_check_adds_rounds_only_while_the_budget_is_a_close_call(tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.latency_plan as latency_plan
    from qdeploy.runtime.benchmark import Measurement

    def scripted(ratios: list[float]):
        served = iter(ratios)

        def run_benchmark(targets, batches, *args, **kwargs):
            ratio = next(served)
            return [Measurement("adapted", "ort-cpu", batch, 1, 10, 1.0, 1.0, 1.0, 1.0, 1.0, vs_base=ratio)
                    for batch in batches]
        return run_benchmark

    monkeypatch.setattr(latency_plan, "_export", lambda model, folder, size, precision: folder / "adapted.onnx")
    monkeypatch.setattr(latency_plan, "_adapted_copy", lambda model, chosen, options: model)
    options = PlanOptions(latency_budget=1.10, batches=(1,))
    clear = [1.01, 1.03, 1.02, 1.04, 1.02] + [9.0] * 20  # a 6th round would be 9.0x
    monkeypatch.setattr(latency_plan, "run_benchmark", scripted(clear))
    check = latency_plan.check_plan(None, ["x"], tmp_path / "base.onnx", options, tmp_path, (32, 32), 0)
    assert check["rounds"]["1"] == clear[:5] and check["ratio"]["1"] == pytest.approx(1.02)
    slow_phase = [1.05, 1.14, 1.06, 1.07, 1.06, 1.05, 1.07, 1.06, 1.08] + [9.0] * 20
    monkeypatch.setattr(latency_plan, "run_benchmark", scripted(slow_phase))
    check = latency_plan.check_plan(None, ["x"], tmp_path / "base.onnx", options, tmp_path, (32, 32), 0)
    # one slow round: its bound is the max (1.14) up to 8 rounds; at 9 it is the 8th (1.08): decided
    assert check["rounds"]["1"] == slow_phase[:9] and check["ratio"]["1"] == pytest.approx(1.06)
    over = [1.20, 1.22, 1.18, 1.25, 1.21] + [1.0] * 20  # the median's interval lies above 1.10: over, decided
    monkeypatch.setattr(latency_plan, "run_benchmark", scripted(over))
    check = latency_plan.check_plan(None, ["x"], tmp_path / "base.onnx", options, tmp_path, (32, 32), 0)
    assert check["rounds"]["1"] == over[:5]
    close = [1.05, 1.12, 1.08, 1.15, 1.09, 1.07, 1.06, 1.08, 1.05, 1.11, 1.06] + [9.0] * 20
    monkeypatch.setattr(latency_plan, "run_benchmark", scripted(close))
    check = latency_plan.check_plan(None, ["x"], tmp_path / "base.onnx", options, tmp_path, (32, 32), 0)
    # the bound stays over 1.10 (the 10th of 11 is 1.12) and the median under: every round is taken
    assert check["rounds"]["1"] == close[:11] and check["ratio"]["1"] == pytest.approx(1.08)


def test_costs_split_the_timed_overhead_by_the_profiled_node_times(tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.latency_plan as latency_plan
    from qdeploy.runtime.profile import Profile

    monkeypatch.setattr(latency_plan, "_export", lambda model, folder, size, precision: folder / "adapted.onnx")
    monkeypatch.setattr(latency_plan, "_adapted_copy", lambda model, chosen, options: model)
    # the profiler sees 3 ms of extra nodes over a 10 ms base (1.3x), the clock only 1.15x / 1.05x
    by_layer = {"x": {"quad Conv": 2.0, "primary Conv": 5.0}, "y": {"quad Conv": 0.5, "quad Mul": 0.5}}
    profiles = {"base.onnx": Profile("base", 1, 1, 5, 10.0), "adapted.onnx": Profile("adapted", 1, 1, 5, 13.0,
                                                                                       by_layer=by_layer)}
    monkeypatch.setattr(latency_plan, "profile_onnx", lambda path, *args, **kwargs: profiles[path.name])
    timed = iter([{"1": 1.15}, {"1": 1.20}, {"1": 1.10}])
    monkeypatch.setattr(latency_plan, "timed_ratios", lambda adapted, base, options: next(timed))
    base_ms, shares, ms = latency_plan.measure_costs(None, ["x", "y"], tmp_path / "base.onnx", PlanOptions(
        batches=(1,), profile_repeats=3), tmp_path, (32, 32))
    assert base_ms == {"1": 10.0}
    # the median timed overhead (0.15) split 2:1 by the layers' own node times (primary nodes left out)
    assert shares["x"]["1"] == pytest.approx(0.10) and shares["y"]["1"] == pytest.approx(0.05)
    assert ms["x"]["1"] == pytest.approx(1.0) and ms["y"]["1"] == pytest.approx(0.5)


def test_timed_ratios_alternate_sessions_that_stop_spinning_after_a_run(tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.bench as bench
    import qdeploy.workflows.latency_plan as latency_plan
    from qdeploy.runtime.benchmark import Measurement

    loaded, seen = [], {}
    monkeypatch.setattr(bench, "load_engine", lambda path, backend, threads, **kw: loaded.append((path.name, kw)))

    def run_benchmark(targets, batches, threads, **kwargs):
        seen.update(kwargs)
        for target in targets:
            target.load(threads[0])
        return [Measurement(t.label, "ort-cpu", b, 1, 9, 1.0, 1.0, 1.0, 1.0, 1.0, vs_base=1.04 if t.base else None)
                for t in targets for b in batches]
    monkeypatch.setattr(latency_plan, "run_benchmark", run_benchmark)
    ratios = latency_plan.timed_ratios(tmp_path / "adapted.onnx", tmp_path / "base.onnx",
                                       PlanOptions(batches=(1, 32), check_seconds=0.5))
    assert ratios == {"1": 1.04, "32": 1.04}
    assert seen["schedule"] == "alternate" and seen["time_budget_s"] == 0.5 and seen["rounds"] == 1
    assert loaded == [("adapted.onnx", {"spin_after_run": False}), ("base.onnx", {"spin_after_run": False})]
    loaded.clear()  # as deployed: ONNX Runtime's default sessions (spinning on) in settled turns
    latency_plan.timed_ratios(tmp_path / "adapted.onnx", tmp_path / "base.onnx", PlanOptions(batches=(1,)),
                              as_deployed=(7, 2.0))
    assert seen["schedule"] == "turns" and seen["rounds"] == 7 and seen["time_budget_s"] == 2.0
    assert loaded == [("adapted.onnx", {}), ("base.onnx", {})]


def _layers(costs: dict[str, float], scores: dict[str, float]) -> dict[str, dict]:
    return {n: {"name": n, "cost": c, "cost_by_batch": {"1": c}, "score": scores[n]} for n, c in costs.items()}


def test_a_failed_check_solves_the_knapsack_again_with_the_measured_costs() -> None:
    from qdeploy.workflows.latency_plan import tighten

    # the profiler saw a quarter of each layer's cost (batch 1 dispatch): the dear, high-scoring
    # layer "a" alone is over budget, the cheap "b" fits
    layers = _layers({"a": 0.03, "b": 0.005}, {"a": 0.9, "b": 0.05})
    timed: list[list[str]] = []

    def check(chosen: list[str]) -> dict:
        timed.append(list(chosen))
        ratio = 1 + 4 * sum(layers[n]["cost"] for n in chosen)
        return {"ratio": {"1": ratio}, "rounds": {"1": [ratio]}}

    chosen, checks = tighten(["a", "b"], layers, 1.10, check, lambda text: None)
    assert timed == [["a", "b"], ["b"]] and chosen == ["b"]  # dropping by score per cost kept "a" to the end
    assert checks[0]["rechosen_with_costs_x"] == pytest.approx(4.0)
    assert checks[-1]["measured"]["1"] == pytest.approx(1.02)
    # nothing fits even at measured costs: re-chosen once ("b"), then dropped; every set checked once
    chosen, checks = tighten(["a", "b"], layers, 1.10, lambda c: {"ratio": {"1": 1.5}, "rounds": {"1": [1.5]}},
                             lambda text: None)
    assert chosen == [] and [c["chosen"] for c in checks] == [["a", "b"], ["b"]] and checks[-1]["dropped"] == "b"


def test_neither_a_median_nor_its_interval_under_the_budget_is_enough() -> None:
    from qdeploy.workflows.latency_plan import tighten

    layers = _layers({"a": 0.03, "b": 0.005}, {"a": 0.9, "b": 0.05})
    noisy = {"ratio": {"1": 1.09}, "rounds": {"1": [1.05, 1.08, 1.09, 1.12, 1.14]}}  # 5 rounds: min..max
    calm = {"ratio": {"1": 1.03}, "rounds": {"1": [1.02, 1.03, 1.03, 1.04, 1.05]}}
    chosen, checks = tighten(["a", "b"], layers, 1.10, lambda c: noisy if "a" in c else calm, lambda text: None)
    assert chosen == ["b"] and [c["chosen"] for c in checks] == [["a", "b"], ["b"]]
    # nor is the median's 80% interval (x(3)..x(7) = 1.04..1.08 of 9): two rounds in nine over the budget
    # put the prediction bound (the 8th, 1.12) over it
    wide = {"ratio": {"1": 1.06}, "rounds": {"1": [1.02, 1.03, 1.04, 1.05, 1.06, 1.07, 1.08, 1.12, 1.13]}}
    chosen, checks = tighten(["a", "b"], layers, 1.10, lambda c: wide if "a" in c else calm, lambda text: None)
    assert chosen == ["b"] and [c["chosen"] for c in checks] == [["a", "b"], ["b"]]
