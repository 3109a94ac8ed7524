"""What an export produced, as numbers, for `export_report.json` (qdeploy.store.ExportReport)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Main-graph nodes by op type; custom-domain ops as `domain::Op` (function bodies not counted)."""
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                     for n in model.graph.node)
    return dict(sorted(counts.items()))


def files_bytes(path: Path) -> int:
    """Size of the .onnx file plus its external-data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict (sorted names, dtype, shape, raw bytes): ties a file to its weights.

    Computed on the adapted PyTorch model, so both modes and both precisions carry the same
    hash as the checkpoint they came from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

