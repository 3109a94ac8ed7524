"""Shared fixtures: small timm models of each family (random weights, offline), a tiny exported model,
a quadratic model in a Triton repository. Test modules take these from here, never from each other."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from qdeploy.models.sources import load_base_model
from tests.runtime_fixtures import INPUT_SIZE, TinyExport, tiny_adapted
from tests.serving_helpers import SHAPE

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


# Tests that mean a CPU backend name it ("ort-cpu"); the few that check what `auto` picks
# on a machine without a GPU skip where one is present (auto would take ort-cuda there).
HAS_NVIDIA_GPU = Path("/dev/nvidiactl").exists()
needs_no_gpu = pytest.mark.skipif(HAS_NVIDIA_GPU, reason="checks the CPU fallback of `auto`; this machine has a GPU")

_TINY_EXPORT: list[TinyExport] = []


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> TinyExport:
    """A tiny adapted model, saved and exported (both modes) once per session, for the runtime tests."""
    if not _TINY_EXPORT:
        from qdeploy.export import ExportOptions, export_model
        from qdeploy.store import save

        root = tmp_path_factory.mktemp("runtime")
        model = tiny_adapted()
        folder = save(model, root / "adapted")
        export_model(model, root / "onnx", ExportOptions(input_size=INPUT_SIZE, source=str(folder)))
        _TINY_EXPORT.append(TinyExport(model, folder, root / "onnx"))
    return _TINY_EXPORT[0]


@pytest.fixture(scope="module")
def quad_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    from qdeploy.adaptation import adapt, randomize_quadratic_terms
    from qdeploy.serving import write_triton_model

    model, report = adapt(model, targets=["0", "2", "5"], input_size=SHAPE)
    assert len(report.layers) == 3
    randomize_quadratic_terms(model)
    folder = tmp_path_factory.mktemp("serving")
    onnx_path = folder / "quad.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.randn(2, *SHAPE),), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_shapes={"input": {0: batch}}, dynamo=True, verbose=False)
    repo = folder / "repo"
    write_triton_model(repo, "quad", onnx_path, max_batch=8, max_queue_delay_us=2000)
    return repo, onnx_path, model


def load_module(name: str, path: Path) -> ModuleType:
    """A script or plugin file loaded by path (benchmarks/ and plugins/ are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def engine_info(**changes):
    """A complete engine.json record (store.plan.EngineInfo) as `qdeploy build` writes it; `changes` override."""
    from qdeploy.store.plan import EngineInfo

    values = dict(tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                  precision="fp16", strongly_typed=False, builder_flags=("FP16",),
                  profile={"x": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}},
                  onnx_path="export/m/fused.onnx", onnx_sha256="0" * 64, plugins="cpp",
                  plugin_library="/lib.so", workspace_bytes=1 << 30, build_seconds=12.5,
                  built_at="2026-11-23T12:00:00+00:00")
    return EngineInfo(**(values | changes))
