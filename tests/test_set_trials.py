"""Short measured trials of layer sets (training/set_trials.py): successive halving and the training trial."""

from __future__ import annotations

import pytest
import torch

from qdeploy.adaptation.targets import candidate_layers
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import load_base_model
from qdeploy.training.model_setup import fit_head
from qdeploy.training.set_trials import held_out_split, set_trials, successive_halving
from tests.train_helpers import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedTrial:
    """A trial whose held-out loss at each step count is given: records how far it was trained."""

    def __init__(self, losses: dict[int, float]):
        self.losses, self.steps = losses, 0

    def advance(self, steps: int) -> None:
        assert steps > self.steps, "a trial is only ever trained on"
        self.steps = steps

    def judge(self) -> tuple[float, float]:
        return self.losses[self.steps], 1.0 - self.losses[self.steps] / 10


def test_successive_halving_trains_the_better_half_on_and_ranks_by_how_long_a_set_lasted() -> None:
    # round 1 (3 steps) keeps 4, 3, 2; round 2 (6 steps) keeps 2 and 4; round 3 (12 steps): 4 wins
    trials = [ScriptedTrial({3: 5.0}), ScriptedTrial({3: 4.0}), ScriptedTrial({3: 3.0, 6: 0.5, 12: 0.4}),
              ScriptedTrial({3: 2.0, 6: 0.9}), ScriptedTrial({3: 1.0, 6: 0.6, 12: 0.3})]
    ranking, rounds = successive_halving(trials, 3)
    assert [r.steps for r in rounds] == [3, 6, 12]
    assert [sorted(r.loss) for r in rounds] == [[0, 1, 2, 3, 4], [2, 3, 4], [2, 4]]
    assert [t.steps for t in trials] == [3, 3, 12, 6, 12]  # the dropped ones stopped where they were dropped
    assert ranking == [4, 2, 3, 1, 0]
    assert rounds[2].accuracy[4] == pytest.approx(0.97)
    paced = [ScriptedTrial({2: 1.0, 4: 0.5}), ScriptedTrial({4: 2.0})]
    assert successive_halving(paced, 4, pace=[0.5, 1.0])[0] == [0, 1]  # a set half as fast trains half the steps
    assert [t.steps for t in paced] == [2, 4]
    two = [ScriptedTrial({5: 1.0}), ScriptedTrial({5: 1.0})]
    assert successive_halving(two, 5)[0] == [0, 1]  # a tie goes to the earlier set, and two sets need one round
    assert [t.steps for t in two] == [5, 5]


def test_the_held_out_slice_is_disjoint_from_what_the_trials_train_on() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(100))
    train, held = held_out_split(data, 30, seed=1)
    seen, judged = {int(x) for (x,) in train}, {int(x) for (x,) in held}
    assert len(judged) == 25 and not seen & judged and seen | judged == set(range(100))  # capped at a quarter
    assert held_out_split(data, 30, seed=1)[1].indices == held.indices  # seeded


def test_training_trials_are_repeatable_and_train_what_the_run_trains() -> None:
    model = load_base_model(TINY, pretrained=False)
    torch.manual_seed(0)
    fit_head(model, 10)
    first, second = candidate_layers(model)[:2]
    sets = [[first], [second], [first, second]]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    run = set_trials(model, "digits-shift", 32, QuadConfig(), False, 8, seed=0)
    ranking, rounds = run(sets, 2)
    assert sorted(ranking) == [0, 1, 2] and [r.steps for r in rounds] == [2, 4]
    assert all(loss > 0 and 0 <= rounds[0].accuracy[i] <= 1 for i, loss in rounds[0].loss.items())
    again = run(sets, 2)  # the same batches, head and factors: the same losses to the last bit
    assert again[0] == ranking and [r.loss for r in again[1]] == [r.loss for r in rounds]
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # trials train copies

    from qdeploy.training import set_trials as module

    frozen = module.TrainingTrial(model, [first], *_trial_parts(model, train_primary=False))
    trained = module.TrainingTrial(model, [first], *_trial_parts(model, train_primary=True))
    for trial in (frozen, trained):
        trial.advance(3)
    primary = f"{first}.primary.weight"
    assert torch.equal(dict(frozen.model.named_parameters())[primary], before[f"{first}.weight"])
    assert not torch.equal(dict(trained.model.named_parameters())[primary], before[f"{first}.weight"])
    assert not torch.equal(frozen.model.classifier.weight, before["classifier.weight"])  # the head trains
    assert frozen.model.get_parameter(f"{first}.quad.proj.weight").abs().sum() > 0  # the zero factor left zero

def _trial_parts(model, train_primary: bool):
    """TrainingTrial's config, adapter shape, batches and judged images at toy sizes."""
    from dataclasses import replace

    from qdeploy.training.config import TrainConfig

    config = replace(TrainConfig(image_size=32, batch_size=8, train_primary=train_primary), scheduler="constant",
                     warmup_steps=1)
    batches = lambda: iter([(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))] * 10)  # noqa: E731
    return config, QuadConfig(), batches, [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
