"""`qdeploy.adapt`: adapt the layers given (or the family's defaults), or, under a latency
budget, the layers a measured plan chooses (workflows/latency_plan.py).

The plan needs the exporter and ONNX Runtime, which the adaptation package may not import
(tests/test_layout.py), so the top-level `qdeploy.adapt` is this function and the plain case
hands straight on to `qdeploy.adaptation.adapt`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from torch import nn

from qdeploy import adaptation
from qdeploy.adaptation import AdaptReport
from qdeploy.layers import QuadConfig


def adapt(model: nn.Module, targets: Sequence[str] | None = None, config: QuadConfig | None = None,
          freeze: bool = True, input_size: tuple[int, ...] | None = None, latency_budget: float | None = None,
          batch: Sequence[int] = (1, 32), backend: str = "ort-cpu", data: str | None = None,
          threads: int | None = None, precision: str = "fp32", trials: int = 0, scoring: str = "first-step",
          **kwargs: Any) -> tuple[nn.Module, AdaptReport]:
    """Make layers of `model` quadratic, in place; returns (model, report).

    Without `latency_budget` this is `qdeploy.adaptation.adapt` (targets: globs, None = the
    family's defaults; input_size (C, H, W) or (H, W) for the FLOPs count). With it, the
    layers come from a latency plan measured on `backend` at `input_size` (H, W) and every
    batch in `batch`, for files in `precision` ("int8": adapted int8 against base int8); `targets`
    then limits the candidates and `data` (e.g. "digits-shift") scores them by zero-start
    gradients (else by added parameters); with `data`, `trials` N > 1 trains the plan's N best
    proposed sets briefly and keeps the best (`qdeploy plan --trials`), and `scoring="ablation"` scores
    each layer by training every candidate term, then zeroing it (`qdeploy plan --scoring`). The plan is in
    `report.plan` (what plan.json holds).
    """
    config = config or QuadConfig()
    chw = None if input_size is None else (tuple(input_size) if len(input_size) == 3 else (3, *input_size))
    if latency_budget is None:
        return adaptation.adapt(model, targets, config=config, freeze=freeze, input_size=chw, **kwargs)
    from qdeploy.workflows.latency_plan import PlanOptions, plan_model

    options = PlanOptions(latency_budget=latency_budget, backend=backend, precision=precision, batches=tuple(batch),
                          data=data, trials=trials, scoring=scoring,
                          input_size=None if chw is None else chw[1:], candidates=tuple(targets) if targets else None,
                          rank=config.rank, depthwise_rank=config.depthwise_rank, dilation=config.dilation)
    if threads is not None:
        options = replace(options, threads=threads)
    plan = plan_model(model, options, type(model).__name__)
    model, report = adaptation.adapt(model, plan.chosen, config=config, freeze=freeze,
                                     input_size=(3, *plan.input_size), **kwargs)
    report.plan = plan.to_dict()
    return model, report
