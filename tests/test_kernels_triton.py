"""The Triton kernel of the fused quadratic branch against PyTorch, on the CPU (TRITON_INTERPRET=1).

Random layers (kernel sizes, strides, dilations, asymmetric pads, dense/grouped/depthwise,
ranks, with and without U) in float32 and float16; the reference is the decomposed branch in
float64 from the same rounded inputs. Also: QuadLinear as a 1x1 convolution, the launcher's
argument errors, and the ahead-of-time PTX that TensorRT's Python plugin bakes into engines.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_module

pytest.importorskip("triton", reason="triton is not installed")

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


# The GPU harness's shapes, inputs, float64 reference and tolerance rule: the kernel is held
# to one standard here (Triton interpreter) and on the GPU (CUDA and Triton).
harness = load_module("qdeploy_kernel_harness", PLUGINS / "cuda" / "test_kernel_gpu.py")
Shape = harness.Shape


@pytest.fixture(scope="module")
def kernels():
    """atrous_quad_triton.py loaded fresh with the interpreter on (triton.jit reads it at decoration)."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield load_module("atrous_quad_triton_interp", PLUGINS / "triton" / "atrous_quad_triton.py")
    sys.modules.pop("atrous_quad_triton_interp", None)
    if previous is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = previous


def run_triton(kernels, t: dict, shape: Shape, **options) -> torch.Tensor:
    return kernels.atrous_quad_triton(*t.values(), shape.stride, shape.dilation, shape.pads, shape.groups, **options)


def assert_close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, label: str) -> None:
    assert y.shape == ref.shape and y.dtype == dtype, label
    excess = harness.error_over_tolerance(y, ref, dtype)
    assert excess <= 1.0, f"{label}: error is {excess:.3g}x the tolerance"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_random_layers_match_pytorch(kernels, dtype: torch.dtype) -> None:
    rng = random.Random(7)
    for index in range(10):
        shape = harness.tiny_shape(rng)
        t = harness.make_tensors(shape, dtype, "cpu", seed=index)
        y = run_triton(kernels, t, shape, block_pixels=16)
        assert_close(y, harness.reference(t, shape), dtype, f"layer {index}: {shape}")


def test_efficientnet_depthwise_layer_stride_two(kernels) -> None:
    """A real layer kind: depthwise 3x3, dilation 3, stride 2 with TF-'same' asymmetric pads."""
    shape = Shape(2, 8, 14, 14, 8, 8, 8, stride=(2, 2), pads=(2, 2, 3, 3), has_u=False)
    t = harness.make_tensors(shape, torch.float32, "cpu", seed=1)
    y = run_triton(kernels, t, shape)
    assert y.shape == (2, 8, 7, 7)
    assert_close(y, harness.reference(t, shape), torch.float32, "depthwise s2")


def test_quad_linear_as_one_by_one_convolution(kernels) -> None:
    """QuadLinear's mapping in both plugins: rows of X are 1x1 images, A/B/U 1x1 convolutions."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 12, generator=gen)
    wa, wb = torch.randn(4, 12, generator=gen), torch.randn(4, 12, generator=gen)
    ba, bb = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    wu, bu = torch.randn(7, 4, generator=gen), torch.randn(7, generator=gen)
    expected = ((x @ wa.T + ba) * (x @ wb.T + bb)) @ wu.T + bu
    y = kernels.atrous_quad_triton(x.reshape(-1, 12, 1, 1), wa[..., None, None], ba, wb[..., None, None], bb,
                                   wu[..., None, None], bu, 1, 1, (0, 0, 0, 0), 1)
    torch.testing.assert_close(y.reshape(2, 5, 7), expected, rtol=1e-5, atol=1e-4)


def test_launcher_refuses_bad_arguments(kernels) -> None:
    x, w, b = torch.zeros(1, 4, 6, 6), torch.zeros(4, 2, 3, 3), torch.zeros(4)
    with pytest.raises(ValueError, match="bu needs wu"):
        kernels.atrous_quad_triton(x, w, b, w, b, None, b, 1, 1, (1, 1, 1, 1), 2)
    with pytest.raises(ValueError, match="groups=3"):
        kernels.atrous_quad_triton(x, w, b, w, b, None, None, 1, 1, (1, 1, 1, 1), 3)
    big = torch.zeros(2 * 65, 2, 3, 3)
    with pytest.raises(ValueError, match="rank per group 65 exceeds 64"):
        kernels.atrous_quad_triton(x, big, None, big, None, None, None, 1, 1, (1, 1, 1, 1), 2)
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        kernels.atrous_quad_triton(x, w, b, w, b, None, None, 1, 4, (0, 0, 0, 0), 2)


def test_aot_ptx_parameter_order_matches_tensorrt() -> None:
    """TensorRT's AOT plugins pass (inputs..., extra int32 scalars..., outputs): the PTX must take them so."""
    from triton.backends.compiler import GPUTarget

    spec = importlib.util.spec_from_file_location("atrous_quad_triton_ptx", PLUGINS / "triton" / "atrous_quad_triton.py")
    module = importlib.util.module_from_spec(spec)
    previous = os.environ.pop("TRITON_INTERPRET", None)  # a real compilation, not the interpreter
    try:
        spec.loader.exec_module(module)
        cases = [(module.atrous_quad_conv_kernel, "fp16", 7, True), (module.atrous_quad_product_kernel, "fp32", 5, None)]
        for kernel, element, pointers, has_bu in cases:
            constants = module.layer_constants(16, 16, 16, 16, (3, 3), (2, 2), (3, 3), (2, 2), has_bu=has_bu)
            compiled = module.compile_ptx(kernel, element, constants, target=GPUTarget("cuda", 90, 32))
            entry = re.search(r"\.entry\s+(\w+)\s*\(([^)]*)\)", compiled.asm["ptx"])
            assert entry and entry.group(1) == compiled.metadata.name
            params = [p.split()[1] for p in entry.group(2).split(",")]  # .u64 / .u32 per parameter
            assert params[:pointers + 5] == [".u64"] * pointers + [".u32"] * 4 + [".u64"], params
            assert getattr(compiled.metadata, "global_scratch_size", 0) == 0
    finally:
        if previous is not None:
            os.environ["TRITON_INTERPRET"] = previous
        sys.modules.pop("atrous_quad_triton_ptx", None)
