"""The `torch` backend: an adapted (or plain trained) model run by PyTorch behind Engine.

It is the reference `qdeploy verify` compares every other backend against, and the eager
baseline `qdeploy bench` measures ONNX Runtime against, so it takes the same inputs and
gives the same outputs (names `input` / `output`) as the exported ONNX files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdeploy.errors import QDeployError
from qdeploy.model_io import INPUT_NAME, OUTPUT_NAME, model_input_size  # the same names: engines are interchangeable
from qdeploy.threads import set_intra_op_threads
from qdeploy.runtime.engine import Engine, TensorSpec
from qdeploy.store import locate


class TorchEngine(Engine):
    """PyTorch eager inference of a model folder (or a run, or a checkpoint in one), or an in-memory module.

    input_size: (H, W); default the size it was trained at, else the model's own.
    threads: intra-op threads (0 = PyTorch's current setting). PyTorch's count is process-wide,
        so it is set once here, not around every forward: engine instances that serve
        concurrently from a thread pool would otherwise race on it.
    """

    def __init__(self, source: str | Path | nn.Module, device: str = "cpu", threads: int = 0,
                 input_size: tuple[int, int] | None = None, check_finite: bool = False) -> None:
        super().__init__(check_finite)
        if isinstance(source, nn.Module):
            model = source
        else:
            stored = locate(source)
            if stored.kind != "model":
                raise QDeployError(f"{source} is {stored.kind}, not a PyTorch model; pass a model folder (or a run)")
            model, input_size = stored.build(), input_size or stored.input_size
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise QDeployError(f"device {device!r} needs a CUDA GPU, and PyTorch sees none; use --device cpu")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.threads = threads
        set_intra_op_threads(threads)
        channels, height, width = model_input_size(model)
        height, width = input_size or (height, width)
        self.backend = "torch"
        self.path = None if isinstance(source, nn.Module) else Path(source)
        self.inputs = [TensorSpec(INPUT_NAME, (None, channels, height, width), np.dtype(np.float32))]
        num_classes = getattr(model, "num_classes", None)
        self.outputs = [TensorSpec(OUTPUT_NAME, (None, num_classes), np.dtype(np.float32))]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch.to(self.device))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {OUTPUT_NAME: self._forward(torch.from_numpy(feeds[INPUT_NAME])).float().cpu().numpy()}

    def _run_torch(self, feeds: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch = feeds[INPUT_NAME]
        return {OUTPUT_NAME: self._forward(batch).to(batch.device)}
