"""Exact graph rewrites around quadratic layers: fold the normalisation that follows P(x) + Q(x).

A BatchNormalization after a primary conv is folded into the conv by torch.onnx's optimizer,
but after a quadratic layer it follows an Add, which no runtime folds: ONNX Runtime's CPU
optimizer turns it into a separate 1x1 depthwise conv (one more pass over the activation),
and the activation behind it (ReLU6 = Clip) then leaves the blocked NCHWc layout through a
ReorderOutput -> Clip -> ReorderInput round trip per layer. The BN is a per-channel affine
map, so it folds exactly into both branches:

    BN(P(x) + U(A(x) * B(x))) = P'(x) + U'(A(x) * B(x)),  P' = s P + t,  U' = s U
    (A' = s A where there is no U),  s = gamma / sqrt(var + eps),  t = beta - s mean.

Folding removes the BN pass; a Clip behind the Add still cannot stay blocked, because ONNX
Runtime fuses Clip only into a Conv it directly follows (`ConvActivationFusion`, before the
NCHWc pass), and its NCHWc pass keeps only Relu/Sigmoid/Tanh in the blocked layout. The
`clip-conv` form therefore puts an identity depthwise 1x1 Conv (weights 1, bias 0: exact)
between the Add and the Clip, which ONNX Runtime fuses with the Clip: one blocked pass
instead of two reorders and a plain Clip. Whether that is faster is measured per layer by
the tuner (forms.py); `fold_norms` only records where it applies.

The rewrites change weights and add nodes around the fused plugin nodes, never the nodes
themselves (plugins/README.md's contract is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qdeploy.export.layer_names import node_name, scopes_of
from qdeploy.plugin_contract import CONV_OP, LINEAR_OP, PLUGIN_DOMAIN, PRODUCT_OP

# Model metadata: {quadratic layer: norm module folded into it}, so the drift localizer
# (runtime/drift.py) compares the layer's tensor, now BN(P(x) + Q(x)), with BN of PyTorch's output.

# Input slots (weight, bias) whose output channels scale the node's output, per plugin op.
_PLUGIN_SCALE_SLOTS = {CONV_OP: (5, 6), LINEAR_OP: (5, 6), PRODUCT_OP: (1, 2)}


@dataclass(frozen=True)
class _Scalable:
    """A node whose output channels are scaled by scaling `weight` (output channels on axis 0) and `bias`."""

    node: ir.Node
    weight_slot: int
    bias_slot: int


@dataclass(frozen=True)
class FoldedNorm:
    """One folded normalisation: the node removed and the Add (P(x) + Q(x)) whose output replaces it."""

    norm: str
    layer: str  # the quadratic layer's name, from its weights
    sum_output: ir.Value
    activation: str | None  # op type of the sole consumer of the sum, if any
    norm_module: str | None = None  # the PyTorch module the norm came from (torch.onnx's scopes)


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    return value.const_value.numpy()


def _own_constant(value: ir.Value | None) -> bool:
    """An initializer read by one node only: rewriting it changes nothing else."""
    return _constant(value) is not None and len(value.uses()) == 1  # type: ignore[union-attr]


def _conv_scalable(node: ir.Node | None, channels: int) -> _Scalable | None:
    if node is None or node.domain != "" or node.op_type != "Conv" or len(node.outputs) != 1:
        return None
    weight = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    array = _constant(weight)
    if array is None or array.ndim != 4 or array.shape[0] != channels or not _own_constant(weight):
        return None
    if bias is not None and not _own_constant(bias):
        return None
    return _Scalable(node, 1, 2)


def _branch(value: ir.Value, channels: int) -> _Scalable | None:
    """How to scale the branch that produces `value` per channel, or None when it cannot be done exactly here."""
    node = value.producer()
    if node is None or not _single_use(value):
        return None
    if node.domain == PLUGIN_DOMAIN and node.op_type in _PLUGIN_SCALE_SLOTS:
        weight_slot, bias_slot = _PLUGIN_SCALE_SLOTS[node.op_type]
        weight, bias = node.inputs[weight_slot], node.inputs[bias_slot]
        array = _constant(weight)
        if array is None or array.shape[0] != channels or not (_own_constant(weight) and _own_constant(bias)):
            return None
        return _Scalable(node, weight_slot, bias_slot)
    if node.domain == "" and node.op_type == "Mul":  # A(x) * B(x) of a depthwise layer: scale A
        factors = [_conv_scalable(v.producer(), channels) if v is not None and _single_use(v) else None
                   for v in node.inputs]
        return factors[0] if all(factors) else None
    return _conv_scalable(node, channels)


def _layer_name(branches: list[_Scalable]) -> str:
    """The quadratic layer's name, from a weight named `<layer>.primary.weight` or `<layer>.quad.*`."""
    for branch in branches:
        name = branch.node.inputs[branch.weight_slot].name or ""
        for marker in (".primary.", ".quad."):
            if marker in name:
                return name.split(marker)[0]
    return branches[0].node.inputs[branches[0].weight_slot].name or "?"


def _set_initializer(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(array, name=value.name)
    value.shape = ir.Shape(array.shape)


def _scale(graph: ir.Graph, branch: _Scalable, scale: np.ndarray, shift: np.ndarray | None) -> None:
    """Multiply the branch's output channels by `scale` and add `shift` (float64 maths, stored in the weight's dtype)."""
    node = branch.node
    weight = node.inputs[branch.weight_slot]
    dtype = weight.const_value.numpy().dtype
    array = weight.const_value.numpy().astype(np.float64)
    _set_initializer(weight, (array * scale.reshape(-1, *[1] * (array.ndim - 1))).astype(dtype))
    bias = node.inputs[branch.bias_slot] if len(node.inputs) > branch.bias_slot else None
    old = np.zeros(len(scale)) if bias is None else bias.const_value.numpy().astype(np.float64)
    new = (old * scale + (0.0 if shift is None else shift)).astype(dtype)
    if bias is not None:
        _set_initializer(bias, new)
        return
    name = f"{weight.name.removesuffix('.weight')}.bias" if weight.name else None
    value = ir.Value(name=name, shape=ir.Shape(new.shape), type=ir.TensorType(weight.dtype),
                     const_value=ir.tensor(new, name=name))
    graph.register_initializer(value)
    node.resize_inputs(branch.bias_slot + 1)
    node.replace_input_with(branch.bias_slot, value)


def _affine(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of an inference BatchNormalization with constant parameters, else None."""
    if len(node.outputs) != 1 or node.attributes.get_int("training_mode", 0):
        return None
    params = [_constant(v) for v in node.inputs[1:5]]
    if any(p is None or p.ndim != 1 for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
    scale = gamma / np.sqrt(var + node.attributes.get_float("epsilon", 1e-5))
    return scale, beta - mean * scale


def fold_norms(model: ir.Model) -> list[FoldedNorm]:
    """Fold every BatchNormalization that follows `P(x) + Q(x)` into both branches, in place.

    A BN is folded when its input is an Add of two single-use branches that each scale per
    channel (a Conv, a depthwise A(x) * B(x), or a plugin node's output weights) and all the
    weights involved are used by that branch only; anything else is left as it is.
    """
    graph = model.graph
    folded: list[FoldedNorm] = []
    for node in list(graph):
        if node.domain != "" or node.op_type != "BatchNormalization":
            continue
        affine = _affine(node)
        total = node.inputs[0]
        add = total.producer() if total is not None else None
        if affine is None or add is None or add.op_type != "Add" or add.domain != "" or not _single_use(total):
            continue
        scale, shift = affine
        branches = [_branch(v, len(scale)) for v in add.inputs]
        if not all(branches) or node.outputs[0].is_graph_output():
            continue
        _scale(graph, branches[0], scale, shift)  # type: ignore[arg-type]
        _scale(graph, branches[1], scale, None)  # type: ignore[arg-type]
        out, params, scopes = node.outputs[0], list(node.inputs[1:]), scopes_of(node)
        ir.convenience.replace_all_uses_with(out, total)
        graph.remove(node, safe=True)
        for value in params:
            if value is not None and value.is_initializer() and not value.uses():
                graph.initializers.pop(value.name)
        uses = total.uses()
        activation = uses[0].node.op_type if len(uses) == 1 else None
        folded.append(FoldedNorm(node.name or out.name or "?", _layer_name(branches), total, activation,  # type: ignore[arg-type]
                                 scopes[-2] if len(scopes) >= 2 else None))
    return folded


def insert_identity_conv(model: ir.Model, fold: FoldedNorm) -> None:
    """Put an identity depthwise 1x1 Conv between the sum and its activation (exact: x * 1 + 0).

    ONNX Runtime fuses a Conv with the Clip behind it, so the activation stays in the blocked
    NCHWc layout; see the module docstring.
    """
    graph = model.graph
    value = fold.sum_output
    channels = value.shape[1] if value.shape is not None else None
    if not isinstance(channels, int):
        raise ValueError(f"the sum of {fold.layer} has no static channel count")
    consumers = value.uses()
    dtype = value.dtype.numpy()
    base = node_name(fold.layer, "blocked", "Conv", 0)
    weight = ir.Value(name=f"{base}.weight", shape=ir.Shape([channels, 1, 1, 1]), type=ir.TensorType(value.dtype),
                      const_value=ir.tensor(np.ones((channels, 1, 1, 1), dtype), name=f"{base}.weight"))
    bias = ir.Value(name=f"{base}.bias", shape=ir.Shape([channels]), type=ir.TensorType(value.dtype),
                    const_value=ir.tensor(np.zeros(channels, dtype), name=f"{base}.bias"))
    graph.register_initializer(weight)
    graph.register_initializer(bias)
    conv = ir.node("Conv", [value, weight, bias], attributes={"group": channels, "kernel_shape": [1, 1]},
                   name=base, num_outputs=1)
    out = conv.outputs[0]
    out.name, out.shape, out.type = base, value.shape, value.type
    graph.insert_after(value.producer(), conv)
    for use in consumers:
        use.node.replace_input_with(use.idx, out)
        # ONNX Runtime names the fused Conv+Clip after the activation: name it for the layer too (profiles)
        use.node.name = node_name(fold.layer, "blocked", use.node.op_type, 1)
        activation_out = use.node.outputs[0]
        if not activation_out.is_graph_output():
            activation_out.name = use.node.name
