"""ONNX forms of the quadratic custom ops: one plugin node each, whose function is the decomposed body.

The exporter translates every `qdeploy::*` custom op into one node of a custom domain that
TensorRT's ONNX parser maps to a plugin (op type = plugin name, `plugin_version` and
`plugin_namespace` attributes; domain `trt.plugins`, which ONNX Runtime's TensorRT provider
also uses). Each op type's decomposed body is an onnxscript function, attached to the model
as a model-local function: ONNX Runtime (and TensorRT without the plugin) run the fused file
through it, and the decomposed file is the same graph with those functions inlined. One body
serves both files, so the two cannot drift apart.

Bodies are generic over the layer: geometry comes in as node attributes, which the body
references (`@kernel_shape`, `@group`, ...), so one function per op type serves every layer.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, TypeVar, Union

import onnx
import onnx_ir as ir
import onnxscript
import torch
from onnx.defs import OpSchema
from onnxscript import FLOAT, FLOAT16
from onnxscript.values import Op, Opset

from qdeploy.export.simplify import simplify
from qdeploy.plugin_contract import CONV_OP, LINEAR_OP, PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, PRODUCT_OP

# Split(num_outputs) needs opset 18, the exporter's own opset; torch.onnx goes up to 23.
MIN_OPSET, MAX_OPSET = 18, 23

T = TypeVar("T", bound=Union[FLOAT, FLOAT16])

_PLUGIN_OPSET = Opset(PLUGIN_DOMAIN, 1)


@functools.lru_cache(maxsize=None)
def plugin_functions(opset: int) -> dict[str, onnxscript.OnnxFunction]:
    """The three bodies, written against default-domain `opset` (a model's functions must match it).

    Inputs are the layer's tensors as PyTorch holds them; each body first arranges A's and B's
    weights into one (the nodes doing so see only initializers, so runtimes fold them at load
    time and the decomposed export folds them into single initializers). The ops used mean
    the same in every opset from 18 to 23.
    """
    op = Opset("", opset)

    @onnxscript.script(_PLUGIN_OPSET, default_opset=op)
    def AtrousQuadProduct(X: T, W_A: T, B_A: T, W_B: T, B_B: T, kernel_shape: Sequence[int],
                          strides: Sequence[int], dilations: Sequence[int], pads: Sequence[int], group: int,
                          rank: int, plugin_version: str, plugin_namespace: str) -> T:
        """Y = A(X) * B(X) for depthwise layers (the only ones without U): two depthwise Convs.

        Interleaving A and B into one Conv would give it two filters per group, which CPU
        runtimes send down a generic grouped path: ONNX Runtime ran such a layer 2-15x slower
        than the two depthwise Convs here, which stay on its fast depthwise kernel.
        """
        A = op.Conv(X, W_A, B_A, kernel_shape=kernel_shape, strides=strides, dilations=dilations, pads=pads,
                    group=group)
        B = op.Conv(X, W_B, B_B, kernel_shape=kernel_shape, strides=strides, dilations=dilations, pads=pads,
                    group=group)
        return op.Mul(A, B)

    @onnxscript.script(_PLUGIN_OPSET, default_opset=op)
    def AtrousQuadConv(X: T, W_A: T, B_A: T, W_B: T, B_B: T, W_U: T, B_U: T, kernel_shape: Sequence[int],
                       strides: Sequence[int], dilations: Sequence[int], pads: Sequence[int], group: int,
                       rank: int, plugin_version: str, plugin_namespace: str) -> T:
        """Y = U(A(X) * B(X)): one grouped Conv over A's and B's filters interleaved per group, then U."""
        groups = op.Unsqueeze(op.Constant(value_int=group), op.Constant(value_ints=[0]))
        per_group = op.Concat(groups, op.Constant(value_ints=[1, -1]), axis=0)
        W_AB = op.Reshape(op.Concat(op.Reshape(W_A, per_group), op.Reshape(W_B, per_group), axis=1),
                          op.Mul(op.Shape(W_A), op.Constant(value_ints=[2, 1, 1, 1])))
        B_AB = op.Reshape(op.Concat(op.Reshape(B_A, per_group), op.Reshape(B_B, per_group), axis=1),
                          op.Constant(value_ints=[-1]))
        AB = op.Conv(X, W_AB, B_AB, kernel_shape=kernel_shape, strides=strides, dilations=dilations,
                     pads=pads, group=group)
        by_group = op.Reshape(AB, op.Concat(op.Constant(value_ints=[0]), groups,
                                            op.Constant(value_ints=[2, -1]), axis=0))
        A, B = op.Split(by_group, axis=2, num_outputs=2)
        P = op.Reshape(op.Mul(A, B), op.Div(op.Shape(AB), op.Constant(value_ints=[1, 2, 1, 1])))
        return op.Conv(P, W_U, B_U, group=group)

    @onnxscript.script(_PLUGIN_OPSET, default_opset=op)
    def QuadLinear(X: T, W_A: T, B_A: T, W_B: T, B_B: T, W_U: T, B_U: T, rank: int, plugin_version: str,
                   plugin_namespace: str) -> T:
        """Y = U((A X) * (B X)) over the last axis: one MatMul over A's and B's rows."""
        W_AB = op.Transpose(op.Concat(W_A, W_B, axis=0), perm=[1, 0])
        A, B = op.Split(op.Add(op.MatMul(X, W_AB), op.Concat(B_A, B_B, axis=0)), axis=-1, num_outputs=2)
        return op.Add(op.MatMul(op.Mul(A, B), op.Transpose(W_U, perm=[1, 0])), B_U)

    return {CONV_OP: AtrousQuadConv, PRODUCT_OP: AtrousQuadProduct, LINEAR_OP: QuadLinear}


def _op_schema(function: onnxscript.OnnxFunction) -> OpSchema:
    """An OpSchema with the function's signature, so the exporter can emit a plain node of its type."""
    signature = function.op_signature
    float_types = ["tensor(float)", "tensor(float16)"]
    inputs = [OpSchema.FormalParameter(p.name, "T") for p in signature.inputs]
    attributes = [OpSchema.Attribute(a.name, OpSchema.AttrType(a.type.value)) for a in signature.attributes]
    return OpSchema(function.name, PLUGIN_DOMAIN, 1, function.__doc__ or "", inputs=inputs,
                    outputs=[OpSchema.FormalParameter("Y", "T")], type_constraints=[("T", float_types, "")],
                    attributes=attributes)


@functools.lru_cache(maxsize=None)
def _plugin_op(name: str) -> Op:
    return Op(_PLUGIN_OPSET, name, _op_schema(plugin_functions(MIN_OPSET)[name]))


_PLUGIN_ATTRIBUTES = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}


def _translate_conv(x, w_a, b_a, w_b, b_b, w_u, b_u, stride: Sequence[int], dilation: Sequence[int],
                    pads: Sequence[int], groups: int):
    """qdeploy::atrous_quad_conv -> AtrousQuadConv, or AtrousQuadProduct when there is no U."""
    top, bottom, left, right = pads
    attributes = dict(kernel_shape=[int(d) for d in w_a.shape[2:]], strides=list(stride),
                      dilations=list(dilation), pads=[top, left, bottom, right], group=groups,
                      rank=int(w_a.shape[0]), **_PLUGIN_ATTRIBUTES)
    if w_u is None:
        return _plugin_op(PRODUCT_OP)(x, w_a, b_a, w_b, b_b, **attributes)
    return _plugin_op(CONV_OP)(x, w_a, b_a, w_b, b_b, w_u, b_u, **attributes)


def _translate_linear(x, w_a, b_a, w_b, b_b, w_u, b_u):
    """qdeploy::quad_linear -> QuadLinear."""
    return _plugin_op(LINEAR_OP)(x, w_a, b_a, w_b, b_b, w_u, b_u, rank=int(w_a.shape[0]), **_PLUGIN_ATTRIBUTES)


def translation_table() -> dict[Callable, Callable]:
    """custom_translation_table for torch.onnx.export: every qdeploy op becomes one plugin node."""
    return {
        torch.ops.qdeploy.atrous_quad_conv.default: _translate_conv,
        torch.ops.qdeploy.quad_linear.default: _translate_linear,
    }


def attach_functions(model: ir.Model) -> None:
    """Give every plugin op type used in `model` its model-local function, at the model's opset."""
    used = {node.op_type for node in model.graph.all_nodes() if node.domain == PLUGIN_DOMAIN}
    bodies = plugin_functions(model.opset_imports[""])
    for name in sorted(used):
        function = ir.serde.deserialize_function(bodies[name].to_function_proto())
        model.functions[function.identifier()] = function
    if used:
        model.opset_imports[PLUGIN_DOMAIN] = 1


# Ops that arrange weights in the bodies: folding them never makes data larger than their
# inputs, so they are folded whatever the weights' size (the default limit is 8192 elements).
_WEIGHT_ARRANGING_OPS = frozenset({"Reshape", "Concat", "Transpose"})


def _fold_weight_arrangement(node: ir.Node) -> bool | None:
    return True if node.domain == "" and node.op_type in _WEIGHT_ARRANGING_OPS else None


def decompose(model: ir.Model) -> None:
    """Inline every plugin node's body and fold its weight arrangement into single initializers.

    The result has default-domain ops only: per layer one Conv (or MatMul) over the
    concatenated A/B weights, Split, Mul and U.
    """
    ir.passes.common.InlinePass()(model)
    simplify(model, should_fold=_fold_weight_arrangement)


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The main graph's plugin nodes (one per quadratic layer in a fused file, none when decomposed)."""
    return [node for node in model.graph.node if node.domain == PLUGIN_DOMAIN]
