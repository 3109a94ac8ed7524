"""The exact rewrites every export gets (unless turned off), and what they did, for the report.

1. name each quadratic layer's nodes `<layer>/<op>` (layer_names.py), so profiles and logs
   attribute time to layers;
2. fold the BatchNormalization after `P(x) + Q(x)` into both branches (norm_fold.py);
3. give each folded layer whose activation would leave ONNX Runtime's blocked layout its
   measured form (forms.py): tuned on the first file exported, the same forms for the next.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import onnx_ir as ir

from qdeploy.export.forms import DEFAULT_FORM, TuneSettings, apply_forms, choosable, tune_forms
from qdeploy.export.layer_names import name_layer_nodes
from qdeploy.export.norm_fold import fold_norms
from qdeploy.model_io import FOLDED_NORMS_KEY

Forms = dict[str, dict[str, Any]]  # layer -> {"form": ..., timings or "cached"}


def rewrite_graph(model: ir.Model, layers: Sequence[str], tune: TuneSettings | None,
                  forms: Forms | None = None) -> tuple[dict[str, Any], Forms]:
    """Rewrite `model` in place; returns the report section and the forms (pass them to the next mode).

    `tune` None takes DEFAULT_FORM for every layer (reproducible); `forms` given skips tuning.
    """
    name_layer_nodes(model, layers)
    folds = fold_norms(model)
    model.metadata_props[FOLDED_NORMS_KEY] = json.dumps({f.layer: f.norm_module for f in folds}, sort_keys=True)
    if forms is None:
        if tune is None:
            forms = {fold.layer: {"form": DEFAULT_FORM, "tuned": False} for fold in folds if choosable(fold)}
        else:
            forms = tune_forms(model, folds, tune)
    apply_forms(model, folds, {layer: info["form"] for layer, info in forms.items()})
    report = {
        "folded_norms": len(folds),
        "layers": {fold.layer: {"norm": fold.norm, "activation": fold.activation, **forms.get(fold.layer, {})}
                   for fold in folds},
    }
    return report, forms
