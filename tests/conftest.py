"""Shared fixtures: small timm models of each family, built offline with random weights."""

from __future__ import annotations

import pytest
import torch

from qdeploy.models.sources import load_base_model

# (timm name, constructor kwargs, input (C, H, W)): one per family the defaults cover.
FAMILIES = {
    "depthwise-cnn": ("mobilenetv3_small_050", {}, (3, 64, 64)),
    "resnet": ("resnet18", {}, (3, 64, 64)),
    "convnext": ("convnext_atto", {}, (3, 64, 64)),
    "vit": ("vit_tiny_patch16_224", {"img_size": 32}, (3, 32, 32)),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def family_model(family: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """A random-weight base model of `family` in eval mode, and its input size."""
    name, kwargs, size = FAMILIES[family]
    return load_base_model(name, pretrained=False, **kwargs), size


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: a second OpenMP thread only adds synchronisation (see qdeploy.threads.torch_threads)."""
    from qdeploy.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Exports tune layer forms and cache them under $XDG_CACHE_HOME: keep that out of the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        yield
