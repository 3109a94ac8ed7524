"""Triton Python-backend model that runs a qdeploy engine (copied as `<version>/model.py`).

This file runs only inside Triton's Python-backend stub (`triton_python_backend_utils`
exists there alone); `qdeploy triton-repo --backend python` copies it next to the model file.
config.pbtxt `parameters` choose the engine: `model_file` (in the version folder),
`engine_backend` (ort-cpu, ort-cuda, ort-trt, tensorrt, torch, auto), `threads`, and
`plugin_libs` (TensorRT plugin libraries for fused ONNX files and plans, ':'-separated).

Tensors cross the stub boundary through DLPack, never through the stub's numpy bindings:
those are compiled for numpy 1 and hand back zeros and empty tensors under numpy 2, while
DLPack works with either, so the stub can run the project's own environment.
"""

import os
import site
import sys

# This process's sys.path first (the code `qdeploy serve` runs, e.g. a checkout on PYTHONPATH), then
# the site folders' .pth files: see triton_install.stub_environment.
sys.path[:0] = [p for p in os.environ.get("QDEPLOY_SYS_PATH", "").split(os.pathsep) if p and p not in sys.path]
for _site_dir in os.environ.get("QDEPLOY_SITE_DIRS", "").split(os.pathsep):  # see triton_install.stub_environment
    if _site_dir:
        site.addsitedir(_site_dir)

import json  # noqa: E402 - the site folders above must be known first
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from qdeploy.runtime import load_engine  # noqa: E402
from qdeploy.store.artifacts import PythonBackendParameters  # noqa: E402


def _output_tensor(name: str, array: np.ndarray):
    """A pb_utils.Tensor over `array` via torch's DLPack capsule (numpy's capsule makes the stub log errors)."""
    capsule = torch.utils.dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(array)))
    return pb_utils.Tensor.from_dlpack(name, capsule)


class TritonPythonModel:
    """Triton calls initialize once per instance and execute with the requests of one batch."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = PythonBackendParameters.from_config(
            {key: value["string_value"] for key, value in config.get("parameters", {}).items()}, config["name"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.engine = load_engine(folder / params.model_file, params.engine_backend, params.threads,
                                  **params.engine_options())
        self.name = config["name"]
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.batching = config.get("max_batch_size", 0) > 0

    def execute(self, requests: list) -> list:
        """Run the requests Triton's dynamic batcher grouped as one engine call; split the rows back."""
        feeds = [{name: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name)) for name in self.input_names}
                 for request in requests]
        pairs = list(zip(requests, feeds))
        groups = [pairs] if self.batching else [[pair] for pair in pairs]
        responses = []
        for group in groups:
            try:
                batch = group[0][1] if len(group) == 1 else {
                    name: np.concatenate([f[name] for _, f in group]) for name in self.input_names}
                outputs = self.engine.infer(batch)
            except Exception as exc:  # this batch fails, logged with its request ids; the model keeps serving
                ids = ", ".join(request.request_id() or "-" for request, _ in group)
                pb_utils.Logger.log_error(f"{self.name}: inference failed for request(s) {ids}:\n{traceback.format_exc()}")
                error = pb_utils.TritonError(f"inference failed: {exc}")
                responses += [pb_utils.InferenceResponse(error=error) for _ in group]
                continue
            offset = 0
            for _, f in group:
                rows = next(iter(f.values())).shape[0] if self.batching else 0
                part = {name: outputs[name][offset: offset + rows] if self.batching else outputs[name]
                        for name in self.output_names}
                responses.append(pb_utils.InferenceResponse([_output_tensor(n, a) for n, a in part.items()]))
                offset += rows
        return responses
