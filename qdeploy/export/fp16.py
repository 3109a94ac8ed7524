"""fp16 export: the graph computes in float16 while its input and output stay float32.

TensorRT 11 builds strongly typed networks: precision comes from the tensor types in the
ONNX graph, not from builder flags, so an fp16 engine needs an fp16 graph. Keeping the
interface in float32 means callers feed and read the same tensors as from the fp32 file;
the two Casts at the boundary are the only precision change they can see.
"""

from __future__ import annotations

import torch
from torch import nn


def _input_to_half(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.half() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to_float(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def fp16_compute(model: nn.Module) -> nn.Module:
    """Turn `model` (an export copy) into float16 with float32 input and output, in place.

    Hooks instead of a wrapper module keep the parameter names, hence the ONNX initializer
    names, the same as in the fp32 export.
    """
    model.half()
    model.register_forward_pre_hook(_input_to_half)
    model.register_forward_hook(_output_to_float)
    return model
