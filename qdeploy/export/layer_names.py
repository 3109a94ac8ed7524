"""Name every node of a quadratic layer `<layer>/<op>`, so runtime logs and profiles say which layer ran.

ONNX Runtime names the nodes it creates (NCHWc convs, fused activations) after the original
node or its output, so a prefix on both survives its optimizer and reaches the profiler's
events: `qdeploy bench --profile` groups time per quadratic layer by this prefix. Nothing
but names changes. This module writes the convention; qdeploy.onnx_io reads it (layer_of, part_of).
"""

from __future__ import annotations

import ast
from typing import Iterable

import onnx_ir as ir

from qdeploy.onnx_io import SEPARATOR
from qdeploy.plugin_contract import PLUGIN_DOMAIN

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # torch.onnx's module path of each node


def scopes_of(node: ir.Node) -> list[str]:
    """The module path torch.onnx recorded for `node` (outermost first, the op's own name last), or []."""
    scopes = node.metadata_props.get(_SCOPES_KEY)
    try:
        return list(ast.literal_eval(scopes)) if scopes else []
    except (ValueError, SyntaxError):
        return []


def _layer_of_node(node: ir.Node, layers: frozenset[str]) -> tuple[str, str] | None:
    """(layer, part): part is `primary` or `quad` (the branch the node computes), or `sum`."""
    names = scopes_of(node)
    layer = next((name for name in reversed(names) if name in layers), None)
    if layer is None:
        return None
    part = next((p for p in ("primary", "quad") if f"{layer}.{p}" in names), "sum")
    return layer, part


def node_name(layer: str, part: str, op_type: str, index: int) -> str:
    """`<layer>/<part>.<op>_<index>`: what the profiler groups by (layer_of, part_of)."""
    return f"{layer}{SEPARATOR}{part}.{op_type}_{index}"


def name_layer_nodes(model: ir.Model, layers: Iterable[str]) -> int:
    """Rename the nodes (and their outputs) that torch.onnx attributes to a quadratic layer; returns how many."""
    wanted = frozenset(layers)
    counts: dict[str, int] = {}
    renamed = 0
    taken = {v.name for v in model.graph.initializers.values()} | {v.name for v in model.graph.inputs}
    for node in model.graph:
        found = _layer_of_node(node, wanted)
        if found is None or node.domain == PLUGIN_DOMAIN:  # plugin nodes keep their layer's own name
            continue
        layer, part = found
        index = counts[layer] = counts.get(layer, -1) + 1
        node.name = node_name(layer, part, node.op_type, index)
        for position, value in enumerate(node.outputs):
            if value.is_graph_output():
                continue
            name = f"{node.name}" + (f":{position}" if position else "")
            if name not in taken:
                value.name = name
                taken.add(name)
        renamed += 1
    return renamed

