"""Helpers the serving tests share: a slow doubling engine, tiny ONNX files, inputs and PyTorch logits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from qdeploy.runtime.engine import Engine, TensorSpec

SHAPE = (3, 16, 16)


class SlowDoubler(Engine):
    """y = 2x after `delay_s`; records each batch's shape and time span, fails on demand."""

    backend = "test"

    def __init__(self, delay_s: float = 0.0, width: int | str = 4) -> None:
        super().__init__()
        self.inputs = [TensorSpec("x", ("batch", width), np.dtype(np.float32))]
        self.outputs = [TensorSpec("y", ("batch", width), np.dtype(np.float32))]
        self.delay_s = delay_s
        self.shapes: list[tuple[int, ...]] = []
        self.spans: list[tuple[float, float]] = []
        self.fail_next = False
        self._lock = threading.Lock()

    @property
    def batches(self) -> list[int]:
        return [shape[0] for shape in self.shapes]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.monotonic()
        time.sleep(self.delay_s)
        with self._lock:
            self.shapes.append(feeds["x"].shape)
            self.spans.append((started, time.monotonic()))
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("device lost")
        return {"y": feeds["x"] * 2}


def make_onnx(path: Path, batch: str | int = "batch", external: bool = False, node_domain: str = "",
              local_function: bool = False) -> Path:
    """input [batch,3,4,4] -> Relu(+bias) -> probs [batch,3,4,4], and a mean [batch] output."""
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [3, 4, 4], np.linspace(0, 1, 48, dtype=np.float32))
    op = "QuadTerm" if node_domain else "Relu"
    nodes = [helper.make_node("Add", ["input", "bias"], ["shifted"]),
             helper.make_node(op, ["shifted"], ["probs"], domain=node_domain),
             helper.make_node("ReduceMean", ["probs"], ["mean"], keepdims=0, axes=[1, 2, 3])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 3, 4, 4]),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, [batch])],
        [bias])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(node_domain, 1)] if node_domain else [])
    functions = [helper.make_function(node_domain, op, ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                                      [helper.make_opsetid("", 17)])] if local_function else []
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return path


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *SHAPE)).astype(np.float32)


def make_shift_onnx(path: Path, shift: float, width: int = 4) -> Path:
    """input [batch, width] -> output = input + shift: each version of a model answers with its own shift."""
    constant = helper.make_tensor("shift", TensorProto.FLOAT, [width], np.full(width, shift, np.float32))
    graph = helper.make_graph([helper.make_node("Add", ["input", "shift"], ["output"])], "shift",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
                              [constant])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
