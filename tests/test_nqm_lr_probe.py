"""Learning-rate probing and the recommendation `train --lr auto` will use."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qdeploy.errors import QDeployError
from qdeploy.nqm import (
    LinearizedModel,
    Regime,
    TwoLayerReLU,
    probe_learning_rates,
    top_kernel_eigenvalue,
)
from qdeploy.nqm.data import two_class_digits


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    split = two_class_digits((8, 9), 48, seed=1, dtype=torch.float64)
    return split.x_train, split.y_train


def test_probe_of_a_wide_net(batch) -> None:
    x, y = batch
    net = TwoLayerReLU(x.shape[1], 512, seed=2, dtype=torch.float64)
    before = copy.deepcopy(net.state_dict())
    probe = probe_learning_rates(net, x, y, multiples=(1.0, 1.9, 3.0, 4.5), steps=40)
    assert probe.lambda0 == pytest.approx(top_kernel_eigenvalue(net, x), rel=1e-6)
    assert (probe.critical_lr, probe.nqm_limit_lr) == pytest.approx((2 / probe.lambda0, 4 / probe.lambda0))
    regimes = {point.lr_times_lambda0: point.regime for point in probe.scan}
    assert regimes[1.0] is regimes[1.9] is Regime.MONOTONE
    assert regimes[3.0] is Regime.CATAPULT
    for point in probe.scan:
        assert point.lr == pytest.approx(point.lr_times_lambda0 / probe.lambda0)
        assert (point.peak_loss > point.initial_loss) == (point.regime is not Regime.MONOTONE)
    assert probe.recommended.regime is Regime.CATAPULT
    assert probe.critical_lr < probe.recommended.lr < probe.nqm_limit_lr
    assert all(torch.equal(before[name], value) for name, value in net.state_dict().items())
    again = probe_learning_rates(net, x, y, multiples=(1.0, 1.9, 3.0, 4.5), steps=40)
    assert again.recommended == probe.recommended  # the probe left the net as it was


def test_any_module_and_loss(batch) -> None:
    """A generic module with cross-entropy: lambda0 is the Gauss-Newton eigenvalue."""
    x, y = batch
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 2)).to(torch.float64)
    labels = (y[:, 0] > 0).long()
    probe = probe_learning_rates(module, x, labels, nn.functional.cross_entropy, multiples=(0.5, 1.0, 1.9), steps=10)
    assert probe.lambda0 > 0
    assert all(point.regime is Regime.MONOTONE for point in probe.scan)
    assert probe.recommended.lr == max(point.lr for point in probe.scan)


def test_every_rate_diverging_is_an_error(batch) -> None:
    """The linearized model diverges for every rate above 2/lambda0: nothing to recommend."""
    x, y = batch
    linear = LinearizedModel(TwoLayerReLU(x.shape[1], 64, seed=0, dtype=torch.float64))
    with pytest.raises(QDeployError, match="every scanned learning rate diverged"):
        probe_learning_rates(linear, x, y, multiples=(2.5, 3.0), steps=30)
