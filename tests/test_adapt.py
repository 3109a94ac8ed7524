"""adapt/unadapt, reports, save/load and base-model loading on four timm families."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from qdeploy.adaptation import DEFAULT_TARGETS, adapt, quadratic_layers, randomize_quadratic_terms, resolve_targets, unadapt
from qdeploy.store import load_model, save
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import load_base_model
from tests.conftest import FAMILIES, family_model


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_start_parity_and_report(family: str) -> None:
    model, size = family_model(family)
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
    base_params = sum(p.numel() for p in model.parameters())
    model, report = adapt(model, input_size=size)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    quad_params = sum(p.numel() for layer in quadratic_layers(model).values() for p in layer.quad.parameters())
    assert report.layers == list(quadratic_layers(model)) and len(report.layers) > 0
    assert report.base_params == base_params and report.added_params == quad_params
    assert report.trainable_params == quad_params  # primary frozen by default
    assert report.added_params_pct == pytest.approx(100 * quad_params / base_params)
    assert 0 < report.added_flops < report.base_flops


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_is_bit_exact(family: str, tmp_path) -> None:
    model, size = family_model(family)
    adapt(model, config=QuadConfig(rank=4), count_model_flops=False)
    randomize_quadratic_terms(model)
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
    save(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "adapter.json").read_text())
    assert config["base"]["arch"] == FAMILIES[family][0] and config["quad"]["rank"] == 4
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_training_step_changes_output_and_keeps_primary() -> None:
    # ViT: timm's random ResNet/ConvNeXt init zeroes or shrinks each block's last scale,
    # which would hide the quadratic terms' effect from a single step.
    model, size = family_model("vit")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    adapt(model, count_model_flops=False)
    x, y = torch.randn(4, *size), torch.randint(0, 1000, (4,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with torch.no_grad():
        before = model(x)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        assert not torch.equal(model(x), before)
    unadapt(model)
    assert model.state_dict().keys() == base_state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base_state.items())


def test_unadapt_returns_the_pretrained_model() -> None:
    model, size = family_model("convnext")
    x = torch.randn(1, *size)
    with torch.no_grad():
        expected = model(x)
    adapt(model, count_model_flops=False)
    randomize_quadratic_terms(model)
    unadapt(model)
    assert not quadratic_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_targets_by_glob_and_type() -> None:
    model, _ = family_model("resnet")
    adapt(model, targets=["layer1.*", "fc"], count_model_flops=False)
    assert list(quadratic_layers(model)) == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "fc"]


def test_unknown_target_and_double_adapt_are_errors() -> None:
    model, _ = family_model("resnet")
    with pytest.raises(QDeployError, match="target 'layer9.*' matches no"):
        adapt(model, targets=["layer9.*"], count_model_flops=False)
    adapt(model, count_model_flops=False)
    with pytest.raises(QDeployError, match="already adapted"):
        adapt(model, count_model_flops=False)


def test_load_errors_are_clear(tmp_path) -> None:
    model, _ = family_model("resnet")
    adapt(model, count_model_flops=False)
    folder = save(model, tmp_path / "m")
    weights = folder / "model.safetensors"

    state = {k: v for k, v in model.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    with pytest.raises(QDeployError, match="shape mismatch at 'fc.weight'"):
        load_model(folder)

    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(QDeployError, match="not a readable safetensors file"):
        load_model(folder)

    with pytest.raises(QDeployError, match="does not exist; pass a train run folder"):
        load_model(tmp_path / "nowhere")


def test_failed_save_leaves_previous_folder_intact(tmp_path, monkeypatch) -> None:
    model, _ = family_model("resnet")
    adapt(model, count_model_flops=False)
    folder = save(model, tmp_path / "m")
    before = (folder / "model.safetensors").read_bytes()

    def boom(_state):
        raise RuntimeError("disk full")

    monkeypatch.setattr("qdeploy.store.models.safetensors_bytes", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save(model, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging leftovers


class NotWeights:
    """An arbitrary pickled object: loading it would run code from the file."""


def test_base_model_sources(tmp_path) -> None:
    with pytest.raises(QDeployError, match="unknown model 'resnet1800'.*Did you mean"):
        load_base_model("resnet1800")
    reference = load_base_model("resnet18", pretrained=False)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)

    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "w.pth")
    for path in ("w.safetensors", "w.pth"):
        loaded = load_base_model("resnet18", checkpoint=tmp_path / path)
        assert loaded.qdeploy_base.checkpoint == str(tmp_path / path)
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)

    ten_way = load_base_model("resnet18", checkpoint=tmp_path / "w.safetensors", num_classes=10)
    assert ten_way.num_classes == 10 and torch.equal(ten_way.conv1.weight, reference.conv1.weight)

    torch.save({"obj": NotWeights()}, tmp_path / "evil.pth")
    with pytest.raises(QDeployError, match="weights_only=True"):
        load_base_model("resnet18", checkpoint=tmp_path / "evil.pth")
    with pytest.raises(QDeployError, match="missing key 'layer1.2.conv1.weight'"):
        load_base_model("resnet34", checkpoint=tmp_path / "w.safetensors")
    with pytest.raises(QDeployError, match="unexpected key 'bn1.num_batches_tracked'"):
        load_base_model("convnext_atto", checkpoint=tmp_path / "w.safetensors")


@pytest.mark.parametrize("family, count, examples", [
    ("depthwise-cnn", 11, ["blocks.0.0.conv_dw", "blocks.4.2.conv_dw"]),  # MobileNetV3: every depthwise conv
    ("resnet", 8, ["layer1.0.conv2", "layer4.1.conv2"]),  # the 3x3 conv of each basic block
    ("convnext", 24, ["stages.0.blocks.0.conv_dw", "stages.3.blocks.1.mlp.fc1"]),  # dw conv + MLP fc1 per block
    ("vit", 12, ["blocks.0.mlp.fc1", "blocks.11.mlp.fc1"]),  # the first MLP linear per block
])
def test_default_targets_of_each_family(family: str, count: int, examples: list[str]) -> None:
    model, _ = family_model(family)
    targets = resolve_targets(model, None)
    assert len(targets) == count and all(name in targets for name in examples), targets
    kinds = {type(dict(model.named_modules())[name]).__name__ for name in targets}
    assert kinds == ({"Linear"} if family == "vit" else {"Conv2d"})  # convnext_atto: its mlp.fc1 is a 1x1 conv


def test_unknown_family_falls_back_to_spatial_convs_and_mlp_fc1() -> None:
    class Net(torch.nn.Module):  # no entry in DEFAULT_TARGETS
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3)
            self.point = torch.nn.Conv2d(8, 8, 1)  # 1x1: not spatial, left alone
            self.mlp = torch.nn.Module()
            self.mlp.fc1, self.mlp.fc2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    assert "Net" not in DEFAULT_TARGETS
    assert resolve_targets(Net(), None) == ["stem", "mlp.fc1"]
    with pytest.raises(QDeployError, match="no default quadratic targets for Linear: pass targets"):
        resolve_targets(torch.nn.Linear(2, 2), None)
