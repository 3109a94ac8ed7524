"""`qdeploy pipeline`: the options of `qdeploy.workflows.pipeline.run_pipeline` and its summary table."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from qdeploy.commands.bench import print_results
from qdeploy.commands.parsing import dataclass_options, parse_dataclass_options
from qdeploy.commands.tables import print_table
from qdeploy.commands.verify import print_report
from qdeploy.timing import PREDICTION_CONFIDENCE
from qdeploy.workflows.pipeline import PipelineOptions, run_pipeline


def _budget(training: dict[str, Any]) -> str:
    return f"{training['steps']} steps, {training['train_seconds']:.0f} s"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"qdeploy pipeline: {summary['model']} on {summary['data']} "
                        f"({summary['seconds']['total_s']:.0f} s)")
    table.add_column("")
    table.add_column("result")
    percent = lambda value: f"{value:.1%}"  # noqa: E731
    acc = summary["accuracy"]
    table.add_row("accuracy before adaptation (step 0)", percent(acc["step0_untrained_head"]))
    training = summary["training"]
    table.add_row("accuracy after adaptation (PyTorch)",
                  f"{percent(acc['adapted'])} ({_budget(training['adapt'])})")
    if acc["finetuned_base"] is not None:
        table.add_row("  plain base fine-tuned, same budget",
                      f"{percent(acc['finetuned_base'])} ({_budget(training['finetune'])}; its latency: base rows)")
    table.add_row("  adapted model without quadratic terms", percent(acc["adapted_without_quadratic_terms"]))
    for mode, parity in summary["parity"].items():
        verdict = "pass" if parity["passed"] else "FAIL"
        table.add_row(f"parity {mode}.onnx (ORT CPU, fp32)",
                      f"{verdict}: max err {parity['max_rel']:.1e} of scale, top-1 agree "
                      f"{percent(parity['eval_top1_agreement'])}, acc {percent(acc['onnx_' + mode])}")
    plan = summary.get("plan")
    if plan:
        ratios = lambda key: ", ".join(f"b{b} {r:.2f}x" for b, r in plan[key].items())  # noqa: E731
        table.add_row(f"latency plan (budget {plan['latency_budget']:.2f}x)",
                      f"{len(plan['layers'])} of {plan['candidates']} layers; predicted {ratios('predicted')}; "
                      f"measured {ratios('measured')}; {PREDICTION_CONFIDENCE:.0%} bound {ratios('bound')} (plan.json)")
    _int8_rows(summary.get("int8"), table)
    rows = {(m["label"], m["batch"]): m for m in summary["latency"]}
    for label in dict.fromkeys(m["label"] for m in summary["latency"] if not m["label"].startswith("base")):
        for (name, batch), m in rows.items():
            if name == label and m["vs_base"] is not None:
                base = label.split(" ", 1)[1]
                table.add_row(f"latency {label}, batch {batch}",
                              f"{m['p50_ms']:.2f} ms vs base {m['p50_ms'] / m['vs_base']:.2f} ms "
                              f"({m['vs_base']:.2f}x, base {base})")
    print_table(console, table)


def _int8_rows(int8: dict[str, Any] | None, table: Table) -> None:
    """What the accuracy-controlled int8 export shipped, its answers and its latency ratios."""
    if int8 is None:
        return
    if int8["shipped"] != "int8":
        table.add_row("int8 decomposed.onnx", f"shipped fp32: {int8['reason']}")
        return
    table.add_row("int8 decomposed.onnx (ORT CPU)",
                  f"{'pass' if int8['passed'] else 'FAIL'}: acc {int8['accuracy']:.1%} (fp32 "
                  f"{int8['reference_accuracy']:.1%}), top-1 agree {int8['fp32_top1_agreement']:.1%} with the fp32 "
                  f"file, {len(int8['float_nodes'])} float nodes")
    for batch, ratio in int8["latency"].items():
        table.add_row(f"  int8 latency, batch {batch}",
                      f"{ratio['vs_base_fp32']:.2f}x base fp32, {ratio['vs_adapted_fp32']:.2f}x adapted fp32")


@click.command("pipeline")
@dataclass_options(PipelineOptions)
def pipeline(**values: Any) -> None:
    """Adapt (train), export both ONNX modes (and int8), verify them against PyTorch and bench base vs adapted."""
    options = parse_dataclass_options(PipelineOptions, values)
    console = Console()
    result = run_pipeline(options, console)
    for report in result.verify.values():
        print_report(report, console)
    print_results(result.latency, console)
    print_summary(result.summary, console)
    console.print(f"summary: {result.path}")
