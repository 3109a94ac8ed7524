"""Clean-up of the decomposed graph: constant folding and dead-code removal, no pattern rewrites.

This is onnxscript's `optimize_ir` without its rewrite rules. torch.onnx has already run the
full optimizer (rewrites included: BatchNorm into Conv, Reshape chains, ...) on the main
graph; what is new after inlining the plugin functions is only their weight arrangement to
fold, which the rules never match, and matching them on a whole graph again took half of a
ViT's export time.
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir
import onnxscript.optimizer


def simplify(model: ir.Model, should_fold: Callable[[ir.Node], bool | None]) -> None:
    """Fold constants (`should_fold` as in onnxscript: True/False forces, None = size limits), in place.

    Folded values become initializers; unused nodes, functions and opset imports go, and
    duplicated initializers and subexpressions are merged.
    """
    common = ir.passes.common
    onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=should_fold)
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.NameFixPass(),
    )(model)
