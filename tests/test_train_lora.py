"""`--mode lora`: HF PEFT LoRA at the quadratic adapter's parameter budget, trained, saved, reloaded."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from qdeploy.adaptation import adapt
from qdeploy.layers import QuadConfig
from qdeploy.store import load_model
from qdeploy.training import train
from qdeploy.training.lora import plan_lora
from tests.conftest import family_model
from tests.fashion_helpers import write_fashion_mnist
from tests.train_helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _peft_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name)


def test_lora_trains_saves_and_reloads_to_the_same_outputs(tmp_path) -> None:
    write_fashion_mnist(tmp_path / "fm", train=32, val=20)
    config = tiny_config(tmp_path, mode="lora", data=f"fashion-mnist:{tmp_path / 'fm'}", epochs=3)
    trained = {}
    result = train(config, hooks=[lambda info: trained.update(model=info.model)])
    summary = json.loads((result.out / "summary.json").read_text())
    lora = summary["lora"]

    # The budget: what adapt adds to the same model with the same QuadConfig.
    model, _ = family_model("depthwise-cnn")
    model.reset_classifier(10)
    _, report = adapt(copy.deepcopy(model), config=QuadConfig(rank=8, depthwise_rank=1, dilation=3),
                      input_size=(3, 32, 32))
    assert lora["quadratic_params"] == report.added_params
    assert lora["quadratic_targets"] == report.layers
    # MobileNetV3's targets are depthwise: PEFT takes them only at rank >= groups, so the
    # block's 1x1 convs stand in, and the summary says so.
    assert set(lora["substituted"]) == set(report.layers)
    assert "rank divisible by its groups" in lora["note"]
    assert all(t.rsplit(".", 1)[0] == s.rsplit(".", 1)[0] for s, ts in lora["substituted"].items() for t in ts)
    per_rank = lora["lora_params"] / lora["rank"]
    assert abs(lora["lora_params"] - lora["quadratic_params"]) <= per_rank / 2  # the nearest rank
    head = sum(p.numel() for p in trained["model"].get_classifier().parameters())
    assert summary["trainable_params"] == lora["lora_params"] + head == _peft_params(trained["model"]) + head

    reloaded = load_model(result.model_dir)
    assert type(reloaded.get_submodule(lora["targets"][0])).__module__.startswith("peft.")
    assert _peft_params(reloaded) == lora["lora_params"]
    lora_b = [p for name, p in reloaded.named_parameters() if ".lora_B." in name]
    assert any(p.abs().max() > 0 for p in lora_b)  # trained away from PEFT's zero start
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), trained["model"].eval()(images), rtol=0, atol=0)
    assert summary["mode"] == "lora" and summary["final_val_acc"] is not None


def test_lora_on_dense_targets_keeps_them(tmp_path) -> None:
    model, size = family_model("resnet")  # targets layer*.conv2: ungrouped 3x3 convs PEFT takes as they are
    quad = QuadConfig(rank=8)
    plan = plan_lora(model, quad, size[-1])
    _, report = adapt(copy.deepcopy(model), config=quad, input_size=size, count_model_flops=False)
    assert plan.targets == report.layers and plan.substituted == {}
    assert plan.note == "PEFT LoRA on the quadratic adapter's targets"
    per_rank = plan.lora_params // plan.rank
    assert abs(plan.lora_params - report.added_params) <= per_rank / 2
