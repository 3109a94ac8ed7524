"""`qdeploy plan`: parses the options of `qdeploy.workflows.latency_plan` and prints the plan."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from qdeploy.commands.parsing import parse_ints
from qdeploy.commands.tables import print_table
from qdeploy.errors import QDeployError
from qdeploy.timing import PREDICTION_CONFIDENCE
from qdeploy.workflows.latency_plan import PLAN_FILE, PLAN_PRECISIONS, PLAN_SCORINGS, LatencyPlan, PlanOptions

DEFAULT = PlanOptions()


def print_plan(plan: LatencyPlan, console: Console) -> None:
    """Per candidate: measured cost per batch, added params and FLOPs, score, chosen; then the ratios."""
    size = f"{plan.input_size[0]}x{plan.input_size[1]}"
    table = Table(title=f"latency plan: {plan.model} at {size} px on {plan.backend} ({plan.precision}), "
                        f"{plan.threads} thread(s), "
                        f"budget {plan.latency_budget:.2f}x" + (" (cached)" if plan.cached else ""))
    table.add_column("layer", overflow="fold")
    for batch in plan.batches:
        table.add_column(f"cost b{batch}", justify="right", no_wrap=True)
    columns = ("params", "FLOPs", "score", *(("train step",) if plan.training else ()), "in")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    chosen = set(plan.chosen)
    for layer in plan.layers:
        costs = [f"{100 * layer['cost_by_batch'][str(b)]:.2f}%" for b in plan.batches]
        step = (f"+{layer['train_step_ms']:.0f} ms",) if plan.training else ()
        table.add_row(layer["name"], *costs, f"{layer['params']:,}", f"{layer['flops_pct']:.2f}%",
                      f"{100 * layer['score']:.1f}%", *step, "yes" if layer["name"] in chosen else "")
    print_table(console, table)
    summary = Table(title=f"chosen: {len(plan.chosen)} of {len(plan.layers)} layers (score: {plan.score})")
    summary.add_column("batch", justify="right")
    for column in ("base ms", "predicted", "measured", f"{PREDICTION_CONFIDENCE:.0%} bound"):
        summary.add_column(column, justify="right", no_wrap=True)
    bound = plan.bound
    for batch in plan.batches:
        key = str(batch)
        timed = [f"{ratios[key]:.3f}x" if key in ratios else "-" for ratios in (plan.measured, bound)]
        summary.add_row(key, f"{plan.base_ms[key]:.2f}", f"{plan.predicted[key]:.3f}x", *timed)
    print_table(console, summary)
    if plan.training:
        console.print(f"trained primary: a training step without terms takes {plan.training['base_step_ms']:.0f} ms "
                      f"(batch {plan.training['batch_size']}); the primary holds "
                      f"{100 * plan.training['primary_gain_share']:.1f}% of the first step's gain, so a term pays "
                      "only where its gain per added ms beats the whole step's")
    if plan.trials:
        print_trials(plan.trials, plan.chosen, console)
    for check in plan.checks[:-1]:  # the failed checks: what each changed
        worst = max(check["measured"].values())
        spread = ", ".join(f"b{batch} {min(r):.2f}-{max(r):.2f}x" for batch, r in check.get("rounds", {}).items())
        change = (f"dropped {check['dropped']}" if "dropped" in check else
                  f"chose again with costs x{check['rechosen_with_costs_x']:.2f}")
        console.print(f"check with {check['layers']} layers measured {worst:.3f}x"
                      + (f" (rounds: {spread})" if spread else "") + f": {change}")


def print_trials(trials: dict, chosen: list[str], console: Console) -> None:
    """The proposed sets in trial-rank order: held-out loss (accuracy) per round of successive halving."""
    rounds = trials["rounds"]
    table = Table(title=f"trials: {len(trials['sets'])} proposed sets, successive halving from "
                        f"{trials['first_steps']} steps (held-out training images)")
    table.add_column("rank", justify="right")
    table.add_column("layers", overflow="fold")
    for round_ in rounds:
        table.add_column(f"{round_['steps']} steps", justify="right", no_wrap=True)
    table.add_column("in", justify="right")
    for rank, index in enumerate(trials["ranking"], 1):
        layers = trials["sets"][index]
        cells = [f"{r['loss'][str(index)]:.3f} ({100 * r['accuracy'][str(index)]:.1f}%)" if str(index) in r["loss"]
                 else "" for r in rounds]
        table.add_row(str(rank), ", ".join(layers), *cells, "yes" if layers == chosen else "")
    print_table(console, table)


def load_plan_model(model: str):
    """The base model named by MODEL: built-in/timm name or a model/run folder (an adapted one's base)."""
    from qdeploy.adaptation import quadratic_layers
    from qdeploy.export.base_model import base_of
    from qdeploy.models.sources import load_base_model
    from qdeploy.store import load_model

    network = load_model(model) if Path(model).exists() else load_base_model(model)
    return base_of(network) if quadratic_layers(network) else network


@click.command("plan")
@click.argument("model")
@click.option("--latency-budget", type=float, default=DEFAULT.latency_budget, show_default=True,
              help="Most adapted/base latency ratio allowed, at every batch (1.10: 10% slower).")
@click.option("--backend", default=DEFAULT.backend, show_default=True, help="Where latency is measured.")
@click.option("--precision", type=click.Choice(PLAN_PRECISIONS), default=DEFAULT.precision, show_default=True,
              help="Precision of the deployed files: int8 times the adapted int8 file against the base int8 file.")
@click.option("--input-size", type=click.IntRange(8), default=None,
              help="Deploy image size in px (square). [default: the data's, else the model's own]")
@click.option("--batch", "batches", default=",".join(map(str, DEFAULT.batches)), show_default=True,
              help="Batch sizes the budget must hold at, comma-separated.")
@click.option("--threads", type=click.IntRange(1), default=DEFAULT.threads, show_default=True,
              help="ONNX Runtime intra-op threads.")
@click.option("--data", default=None, help="Score layers by zero-start gradients on this data ('digits-shift', "
              "'fashion-mnist[:DIR]', an ImageFolder). [default: score by added parameters]")
@click.option("--train-primary", is_flag=True, help="Plan for a run that trains the pretrained weights too, for a "
              "fixed time (`qdeploy train --train-primary --max-minutes M`): with --data, terms are chosen by loss "
              "decrease per second of a training step, since the primary learns in every step a term makes dearer.")
@click.option("--trials", type=click.IntRange(0), default=DEFAULT.trials, show_default=True,
              help="With --data: train the N best proposed layer sets briefly (successive halving from "
                   f"{DEFAULT.trial_steps} steps, judged on held-out training images) and keep the best that fits; "
                   "0: the objective's best set, untried.")
@click.option("--scoring", type=click.Choice(PLAN_SCORINGS), default=DEFAULT.scoring, show_default=True,
              help="With --data: first-step = each term's zero-start gradient (no training); ablation = train every "
                   f"candidate term together ({DEFAULT.scoring_steps} steps, held-out training images left out), "
                   "then score each by the held-out loss rise when it is zeroed.")
@click.option("--candidates", multiple=True, help="Module-name glob of a candidate layer, repeatable. "
              "[default: every Conv2d/Linear the adapter can wrap, head and patch embedding left out]")
@click.option("--out", type=click.Path(path_type=Path), default=Path(PLAN_FILE), show_default=True,
              help="Where plan.json goes (a .json path or a folder).")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Re-use a plan measured before with the same model, settings and machine.")
def plan(model: str, latency_budget: float, backend: str, precision: str, input_size: int | None, batches: str,
         threads: int,
         data: str | None, train_primary: bool, trials: int, scoring: str, candidates: tuple[str, ...], out: Path,
         cache: bool) -> None:
    """Choose where MODEL's quadratic terms go so it stays within a latency budget, by measurement."""
    from dataclasses import replace

    from qdeploy.workflows.latency_plan import plan_model

    options = replace(DEFAULT, latency_budget=latency_budget, backend=backend, precision=precision, threads=threads,
                      data=data, train_primary=train_primary, trials=trials, scoring=scoring,
                      input_size=(input_size, input_size) if input_size else None, candidates=candidates or None,
                      batches=parse_ints(batches, "--batch", minimum=1), use_cache=cache)
    if out.suffix not in ("", ".json"):
        raise QDeployError(f"--out {out} must be a .json file or a folder")
    console = Console()
    with console.status("planning") as status:
        result = plan_model(load_plan_model(model), options, model, progress=lambda text: status.update(text))
    print_plan(result, console)
    console.print(f"wrote {result.write(out)}")
