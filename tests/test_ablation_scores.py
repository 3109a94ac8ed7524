"""Benefit scores from training (training/ablation_scores.py): every candidate term trained, then each zeroed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from qdeploy.adaptation import quadratic_layers
from qdeploy.adaptation.scores import zero_factor
from qdeploy.adaptation.targets import candidate_layers
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import load_base_model
from qdeploy.training.ablation_scores import ablation_scorer, loss_rises
from qdeploy.training.model_setup import fit_head
from qdeploy.training.set_trials import TrainingTrial
from tests.test_set_trials import _trial_parts
from tests.train_helpers import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _held_out_loss(model, judged) -> float:
    model.eval()
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y, reduction="sum").item() for x, y in judged) / sum(len(y) for _, y in judged)


def test_a_rise_is_the_held_out_loss_with_that_term_zeroed_and_the_model_is_restored() -> None:
    model = load_base_model(TINY, pretrained=False)
    torch.manual_seed(0)
    fit_head(model, 10)
    layers = candidate_layers(model)[:2]
    config, quad, batches, judged = _trial_parts(model, train_primary=False)
    untrained = TrainingTrial(model, layers, config, quad, batches, judged)
    assert loss_rises(untrained) == {name: 0.0 for name in layers}  # zero terms: switching them off changes nothing
    trial = TrainingTrial(model, layers, config, quad, batches, judged)
    trial.advance(3)
    before = {name: p.detach().clone() for name, p in trial.model.named_parameters()}
    rises = loss_rises(trial)
    assert all(torch.equal(p, before[name]) for name, p in trial.model.named_parameters())
    with_all = _held_out_loss(trial.model, judged)
    for name in layers:
        off = copy.deepcopy(trial.model)
        for p in zero_factor(quadratic_layers(off)[name]):
            p.data.zero_()
        assert rises[name] == pytest.approx(_held_out_loss(off, judged) - with_all, abs=1e-6)
    assert any(rise != 0.0 for rise in rises.values())  # three steps moved the terms


def test_the_scorer_trains_a_copy_in_the_runs_primary_mode_and_is_repeatable() -> None:
    model = load_base_model(TINY, pretrained=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    candidates = candidate_layers(model)[:3]
    frozen = ablation_scorer(model, "digits-shift", 32, QuadConfig(), False, 8, seed=0, steps=3)
    rises = frozen(candidates)
    assert list(rises) == candidates and any(rise != 0.0 for rise in rises.values())
    assert frozen(candidates) == rises  # same head, batches and factors: the same rises to the last bit
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the base is left as it was
    trained = ablation_scorer(model, "digits-shift", 32, QuadConfig(), True, 8, seed=0, steps=3)(candidates)
    assert trained != rises  # the primary trains too, as the run's does
