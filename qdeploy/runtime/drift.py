"""Where do the outputs drift? Every quadratic layer and block compared with PyTorch, in order.

The exporter keeps each node's PyTorch module path (metadata `pkg.torch.onnx.name_scopes`),
so a module's output in the graph is the output of the last node inside that module (after
the export's norm fold, a quadratic layer's tensor holds its output through the folded norm:
the model's `qdeploy.folded_norms` metadata says which, and the reference applies it too). Those
tensors become extra graph outputs of a temporary copy of the file; the same modules'
outputs in PyTorch come from forward hooks. Walking the modules in execution order, the
first one past tolerance is where the error enters (everything after inherits it).
"""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from qdeploy.adaptation import quadratic_layers
from qdeploy.compare import Tolerance, compare
from qdeploy.onnx_io import load_onnx

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_EXTERNAL_THRESHOLD = 2**30  # above this, the temporary copy keeps its weights in a side file


def block_of(name: str) -> str | None:
    """The block a layer belongs to: its deepest ancestor that is an item of a list/Sequential."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if parts[end - 1].isdigit():
            return ".".join(parts[:end])
    return None


def drift_sites(model: nn.Module) -> dict[str, str]:
    """Module name -> "quadratic" or "block", for every quadratic layer and the blocks holding them."""
    sites: dict[str, str] = {}
    for name in quadratic_layers(model):
        block = block_of(name)
        if block is not None:
            sites.setdefault(block, "block")
        sites[name] = "quadratic"
    return sites


def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            return list(ast.literal_eval(prop.value))
    return []


def module_outputs(proto: onnx.ModelProto, modules: set[str]) -> dict[str, str]:
    """Module name -> the graph tensor holding its output (nodes are in topological order)."""
    found: dict[str, str] = {}
    for node in proto.graph.node:
        for scope in _scopes(node):
            if scope in modules:
                found[scope] = node.output[0]
    return found


def with_outputs(proto: onnx.ModelProto, tensors: list[str], path: Path) -> Path:
    """Save `proto` to `path` with `tensors` added as graph outputs (types from shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    known = {info.name: info for info in [*inferred.graph.value_info, *inferred.graph.output]}
    present = {output.name for output in proto.graph.output}
    for name in tensors:
        if name not in present:
            info = known.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            proto.graph.output.append(info)
            present.add(name)
    external = proto.ByteSize() > _EXTERNAL_THRESHOLD
    onnx.save(proto, str(path), save_as_external_data=external, location=f"{path.name}.data" if external else None)
    return path


def folded_norms(proto: onnx.ModelProto) -> dict[str, str]:
    """{quadratic layer: the norm module the exporter folded into it} (export/norm_fold.py)."""
    from qdeploy.model_io import FOLDED_NORMS_KEY

    value = next((p.value for p in proto.metadata_props if p.key == FOLDED_NORMS_KEY), None)
    return {layer: norm for layer, norm in json.loads(value).items() if norm} if value else {}


def _reference_outputs(model: nn.Module, modules: list[str], images: np.ndarray,
                       folded: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Each module's PyTorch output, in the order the modules finished (execution order).

    A layer with a folded norm is compared after that norm (its affine map only, not a fused
    activation), since that is what its tensor in the graph now holds.
    """
    captured: dict[str, np.ndarray] = {}
    folded = folded or {}

    def hook(name: str):
        norm = model.get_submodule(folded[name]) if name in folded else None

        def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:  # None: output unchanged
            if norm is not None:
                output = F.batch_norm(output, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                      False, 0.0, norm.eps)
            captured.setdefault(name, output.detach().float().cpu().numpy())
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in modules]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(images).to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def localize_drift(onnx_path: str | Path, model: nn.Module, images: np.ndarray, tolerance: Tolerance,
                   backend: str = "ort-cpu", threads: int = 0) -> dict[str, Any]:
    """Per-site errors of the ONNX file (run on `backend`) against `model`, and the first past tolerance."""
    from qdeploy.runtime.loader import load_engine

    proto = load_onnx(onnx_path, load_external_data=True)
    sites = drift_sites(model)
    tensors = module_outputs(proto, set(sites))
    reference = _reference_outputs(model.eval(), list(tensors), images, folded_norms(proto))
    with tempfile.TemporaryDirectory(prefix="qdeploy-drift-") as tmp:
        probe = with_outputs(proto, list(tensors.values()), Path(tmp) / "probe.onnx")
        outputs = load_engine(probe, backend, threads).infer(images)
    rows = []
    for name, expected in reference.items():
        got = outputs[tensors[name]]
        row = {"module": name, "kind": sites[name], "tensor": tensors[name]}
        if got.shape != expected.shape:  # not compared: neither a pass nor a failure
            rows.append({**row, "comparable": False, "passed": None,
                         "shapes": {"onnx": list(got.shape), "torch": list(expected.shape)}})
            continue
        stats = compare(expected, got, tolerance)
        rows.append({**row, "comparable": True, "max_abs": stats.max_abs, "max_rel": stats.max_rel,
                     "cosine": stats.cosine, "passed": stats.passed})
    first = {kind: next((r["module"] for r in rows if r["kind"] == kind and r["passed"] is False), None)
             for kind in ("quadratic", "block")}
    return {"sites": rows, "first_layer": first["quadratic"], "first_block": first["block"],
            "missing": sorted(set(sites) - set(tensors)),
            "uncompared": [r["module"] for r in rows if not r["comparable"]]}
