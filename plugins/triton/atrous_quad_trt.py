"""The fused quadratic nodes as TensorRT Python plugins (`tensorrt.plugin`), for users without a C++ toolchain.

    import tensorrt.plugin  # TensorRT >= 10.9 (aot_impl)
    exec this file (qdeploy's load_plugins(kind="python") does), then parse the fused ONNX file.

Same op names, namespace, version and attributes as the C++ plugin library (and the exporter's
nodes): `qdeploy::AtrousQuadConv`, `qdeploy::AtrousQuadProduct`, `qdeploy::QuadLinear`. Each
has an ahead-of-time implementation: the Triton kernel of atrous_quad_triton.py is compiled to
PTX while the engine is built and baked into it, so the engine runs in trtexec or Triton
Inference Server with no Python. Layer geometry is compiled into the PTX (constexpr); the
batch (and the image size) stay dynamic, passed as symbolic scalars and grid sizes.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the signatures' annotations as types.
import importlib.util
import sys
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import numpy.typing as npt
import tensorrt as trt
import tensorrt.plugin as trtp


def _load_kernels():
    """atrous_quad_triton.py beside this file (this file is loaded by path, not as a package)."""
    path = Path(__file__).with_name("atrous_quad_triton.py")
    spec = importlib.util.spec_from_file_location("qdeploy_atrous_quad_triton", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kernels = _load_kernels()

NAMESPACE = "qdeploy"
_TRITON_TYPES = {trt.float32: "fp32", trt.float16: "fp16"}


def _check_types(*descs: trtp.TensorDesc) -> str:
    """All tensors float32 or all float16 (as in the C++ plugin); returns Triton's type name."""
    kind = _TRITON_TYPES.get(descs[0].dtype)
    if kind is None or any(d.dtype != descs[0].dtype for d in descs):
        raise ValueError("qdeploy plugins take float32 or float16 tensors, all of one type")
    return kind


def _conv_output(x: trtp.TensorDesc, w_a: trtp.TensorDesc, channels, kernel_shape, strides, dilations,
                 pads) -> trtp.TensorDesc:
    """[N, channels, Hout, Wout], the extents by the kernels' own rule on TensorRT shape expressions."""
    out = x.like()
    extents = [
        kernels.output_extent(x.shape_expr[2 + axis], int(kernel_shape[axis]), int(strides[axis]),
                              int(dilations[axis]), int(pads[axis]), int(pads[axis + 2]))
        for axis in (0, 1)
    ]
    out.shape_expr = trtp.ShapeExprs.from_tuple((x.shape_expr[0], channels, *extents))
    return out


def _aot(kernel, x: trtp.TensorDesc, out: trtp.TensorDesc, constants: dict, image_exprs):
    """(kernel name, PTX, launch parameters, extra scalar args) for TensorRT's AOT plugin.

    TensorRT passes the inputs, then the extra scalars, then the output: the kernels'
    parameter order. Triton's scratch pointers after them must stay unused.
    """
    compiled = kernels.compile_ptx(kernel, _check_types(x, out), constants)
    if getattr(compiled.metadata, "global_scratch_size", 0):
        raise ValueError("the Triton kernel needs global scratch memory, which AOT plugins do not pass")
    batch, height, width, hout, wout = image_exprs
    launch = trtp.KernelLaunchParams()
    launch.grid_x = kernels.program_count(batch, hout, wout, constants["GROUPS"], constants["BLOCK_P"])
    launch.block_x = compiled.metadata.num_warps * 32
    launch.shared_mem = compiled.metadata.shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (height, width, hout, wout)])
    return compiled.metadata.name, compiled.asm["ptx"], launch, extra


def _conv_constants(x: trtp.TensorDesc, w_a: trtp.TensorDesc, cout: int, kernel_shape, strides, dilations, pads,
                    group: int, has_bu: bool | None) -> dict:
    return kernels.layer_constants(
        int(x.shape[1]), int(w_a.shape[0]), cout, int(group), tuple(int(k) for k in kernel_shape),
        tuple(int(s) for s in strides), tuple(int(d) for d in dilations), (int(pads[0]), int(pads[1])),
        has_bu=has_bu)


def _image_exprs(x: trtp.TensorDesc, out: trtp.TensorDesc):
    return (x.shape_expr[0], x.shape_expr[2], x.shape_expr[3], out.shape_expr[2], out.shape_expr[3])


AotResult = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]
Ints = npt.NDArray[np.int32]


@trtp.register(f"{NAMESPACE}::AtrousQuadConv")
def atrous_quad_conv_desc(X: trtp.TensorDesc, W_A: trtp.TensorDesc, B_A: trtp.TensorDesc, W_B: trtp.TensorDesc,
                          B_B: trtp.TensorDesc, W_U: trtp.TensorDesc, B_U: trtp.TensorDesc, kernel_shape: Ints,
                          strides: Ints, dilations: Ints, pads: Ints, group: int, rank: int) -> trtp.TensorDesc:
    """Y = U(A(X) * B(X)): [N, Cout, Hout, Wout] with Cout = W_U's first dimension."""
    _check_types(X, W_A, B_A, W_B, B_B, W_U, B_U)
    return _conv_output(X, W_A, W_U.shape_expr[0], kernel_shape, strides, dilations, pads)


@trtp.aot_impl(f"{NAMESPACE}::AtrousQuadConv")
def atrous_quad_conv_aot(X: trtp.TensorDesc, W_A: trtp.TensorDesc, B_A: trtp.TensorDesc, W_B: trtp.TensorDesc,
                         B_B: trtp.TensorDesc, W_U: trtp.TensorDesc, B_U: trtp.TensorDesc, kernel_shape: Ints,
                         strides: Ints, dilations: Ints, pads: Ints, group: int, rank: int,
                         outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
    out = outputs[0]
    constants = _conv_constants(X, W_A, int(W_U.shape[0]), kernel_shape, strides, dilations, pads, group, True)
    return _aot(kernels.atrous_quad_conv_kernel, X, out, constants, _image_exprs(X, out))


@trtp.register(f"{NAMESPACE}::AtrousQuadProduct")
def atrous_quad_product_desc(X: trtp.TensorDesc, W_A: trtp.TensorDesc, B_A: trtp.TensorDesc, W_B: trtp.TensorDesc,
                             B_B: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, dilations: Ints, pads: Ints,
                             group: int, rank: int) -> trtp.TensorDesc:
    """Y = A(X) * B(X): [N, R, Hout, Wout]."""
    _check_types(X, W_A, B_A, W_B, B_B)
    return _conv_output(X, W_A, W_A.shape_expr[0], kernel_shape, strides, dilations, pads)


@trtp.aot_impl(f"{NAMESPACE}::AtrousQuadProduct")
def atrous_quad_product_aot(X: trtp.TensorDesc, W_A: trtp.TensorDesc, B_A: trtp.TensorDesc, W_B: trtp.TensorDesc,
                            B_B: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, dilations: Ints, pads: Ints,
                            group: int, rank: int, outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
    out = outputs[0]
    constants = _conv_constants(X, W_A, int(W_A.shape[0]), kernel_shape, strides, dilations, pads, group, None)
    return _aot(kernels.atrous_quad_product_kernel, X, out, constants, _image_exprs(X, out))


@trtp.register(f"{NAMESPACE}::QuadLinear")
def quad_linear_desc(X: trtp.TensorDesc, W_A: trtp.TensorDesc, B_A: trtp.TensorDesc, W_B: trtp.TensorDesc,
                     B_B: trtp.TensorDesc, W_U: trtp.TensorDesc, B_U: trtp.TensorDesc, rank: int) -> trtp.TensorDesc:
    """Y = U((A X) * (B X)) over X's last axis: X's shape with the last dimension W_U's first."""
    _check_types(X, W_A, B_A, W_B, B_B, W_U, B_U)
    out = X.like()
    out.shape_expr = trtp.ShapeExprs.from_tuple([X.shape_expr[i] for i in range(X.ndim - 1)] + [W_U.shape_expr[0]])
    return out


@trtp.aot_impl(f"{NAMESPACE}::QuadLinear")
def quad_linear_aot(X: trtp.TensorDesc, W_A: trtp.TensorDesc, B_A: trtp.TensorDesc, W_B: trtp.TensorDesc,
                    B_B: trtp.TensorDesc, W_U: trtp.TensorDesc, B_U: trtp.TensorDesc, rank: int,
                    outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
    # Rows of X are 1x1 images with in_features channels; A, B and U are 1x1 convolutions.
    rows = X.shape_expr[0]
    for axis in range(1, X.ndim - 1):
        rows = rows * X.shape_expr[axis]
    constants = kernels.layer_constants(int(X.shape[-1]), int(W_A.shape[0]), int(W_U.shape[0]), 1, (1, 1), (1, 1),
                                        (1, 1), (0, 0))
    return _aot(kernels.atrous_quad_conv_kernel, X, outputs[0], constants, (rows, 1, 1, 1, 1))
