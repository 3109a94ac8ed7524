"""`qdeploy lr-probe` and `qdeploy catapult`: learning-rate regimes seen through the NQM."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qdeploy import atomic
from qdeploy.errors import QDeployError
from qdeploy.nqm import defaults
from qdeploy.commands.tables import print_table

MODELS = ("mlp2",)


def _floats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 1,2.5,3") from None
    if min(numbers) <= 0:
        raise click.BadParameter("learning-rate multiples must be positive")
    return numbers


def _digit_pair(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise click.BadParameter(f"{value!r} is not two digits separated by a comma, e.g. 8,9")
    return int(parts[0]), int(parts[1])


@click.command("lr-probe")
@click.option(
    "--model",
    "model_name",
    default="mlp2",
    show_default=True,
    help="'mlp2': the built-in wide two-layer ReLU network (see --width). timm model names are "
    "not supported yet; probe any torch.nn.Module with qdeploy.nqm.probe_learning_rates.",
)
@click.option(
    "--width", default=defaults.PROBE_WIDTH, show_default=True, type=click.IntRange(1), help="Hidden units of mlp2."
)
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="'digits' (scikit-learn digits {} vs {}, offline) or an ImageFolder directory "
    "(one sub-folder per class).".format(*defaults.DIGIT_CLASSES),
)
@click.option(
    "--samples", default=defaults.PROBE_SAMPLES, show_default=True, type=click.IntRange(2), help="Batch size."
)
@click.option(
    "--image-size",
    default=defaults.PROBE_IMAGE_SIZE,
    show_default=True,
    type=click.IntRange(1),
    help="ImageFolder images are resized to this square.",
)
@click.option("--steps", default=defaults.SCAN_STEPS, show_default=True, type=click.IntRange(1), help="Steps per rate.")
@click.option(
    "--multiples",
    default=",".join(f"{m:g}" for m in defaults.SCAN_MULTIPLES),
    show_default=True,
    callback=_floats,
    help="Learning rates to scan, in units of 1/lambda0.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the probe here.")
def lr_probe(
    model_name: str,
    width: int,
    data: str,
    samples: int,
    image_size: int,
    steps: int,
    multiples: tuple[float, ...],
    seed: int,
    json_path: Path | None,
) -> None:
    """Measure lambda0, the learning-rate regime boundaries and a recommended catapult rate.

    lambda0 is the top eigenvalue of the tangent kernel J J^T / n on one batch, for the
    mean squared loss. Full-batch gradient descent decreases the loss monotonically below
    2/lambda0, catapults between 2/lambda0 and 4/lambda0 (wide networks often beyond) and
    diverges above. A short scan classifies each rate on this model and batch.
    """
    from qdeploy.nqm import TwoLayerReLU, probe_learning_rates
    from qdeploy.nqm.data import image_folder_batch, two_class_digits
    from qdeploy.threads import torch_threads

    if model_name not in MODELS:
        raise QDeployError(
            f"unknown model {model_name!r}: use --model mlp2 (timm names are not supported yet), "
            "or call qdeploy.nqm.probe_learning_rates on any torch.nn.Module"
        )
    if data == "digits":
        split = two_class_digits(defaults.DIGIT_CLASSES, samples, seed=seed)
        x, y = split.x_train, split.y_train
    else:
        x, y = image_folder_batch(data, image_size=image_size, max_samples=samples, seed=seed)
    with torch_threads(1):
        model = TwoLayerReLU(x.shape[1], width, y.shape[1], seed=seed)
        probe = probe_learning_rates(model, x, y, multiples=multiples, steps=steps)

    console = Console()
    console.print(f"lambda0 = {probe.lambda0:.6g}   (top eigenvalue of J J^T / n, {x.shape[0]} samples)")
    console.print(f"2/lambda0 = {probe.critical_lr:.6g}   monotone below, catapult above")
    console.print(
        f"4/lambda0 = {probe.nqm_limit_lr:.6g}   the NQM diverges above (deep ReLU nets reach ~12/lambda0)"
    )
    table = Table(title=f"{steps} full-batch steps per learning rate")
    for column in ("eta", "eta x lambda0", "regime", "initial loss", "peak loss", "final loss"):
        table.add_column(column, justify="right")
    for point in probe.scan:
        table.add_row(
            f"{point.lr:.4g}",
            f"{point.lr_times_lambda0:g}",
            point.regime.value,
            f"{point.initial_loss:.4g}",
            f"{point.peak_loss:.4g}",
            f"{point.final_loss:.4g}",
        )
    print_table(console, table)
    best = probe.recommended
    console.print(
        f"recommended learning rate: {best.lr:.6g}  (= {best.lr_times_lambda0:g}/lambda0, {best.regime.value})"
    )
    if json_path is not None:
        atomic.write_json(json_path, probe.to_dict())


@click.command("catapult")
@click.option(
    "--out",
    "out_dir",
    default="catapult-out",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for catapult.png and catapult.json.",
)
@click.option("--width", default=defaults.CATAPULT_WIDTH, show_default=True, type=click.IntRange(1))
@click.option("--n-train", default=defaults.CATAPULT_N_TRAIN, show_default=True, type=click.IntRange(1))
@click.option("--steps", default=defaults.CATAPULT_STEPS, show_default=True, type=click.IntRange(1))
@click.option(
    "--multiples",
    default=",".join(f"{m:g}" for m in defaults.CATAPULT_MULTIPLES),
    show_default=True,
    callback=_floats,
    help="Learning rates in units of the critical rate 2/lambda0.",
)
@click.option(
    "--digits",
    "classes",
    default=",".join(map(str, defaults.DIGIT_CLASSES)),
    show_default=True,
    callback=_digit_pair,
    help="The two digit classes.",
)
@click.option("--seed", default=0, show_default=True, type=int)
def catapult(
    out_dir: Path,
    width: int,
    n_train: int,
    steps: int,
    multiples: tuple[float, ...],
    classes: tuple[int, int],
    seed: int,
) -> None:
    """Reproduce the catapult phase: a wide 2-layer ReLU net vs its NQM vs its linearization.

    All three are trained from the same weights with full-batch gradient descent on squared
    loss over two classes of scikit-learn digits (no download), at multiples of 2/lambda0.
    Writes loss and top-eigenvalue curves (catapult.png) and per-run metrics plus a table of
    best test accuracy (catapult.json).
    """
    from qdeploy.nqm.experiment import MODEL_KINDS, CatapultConfig, run_catapult_experiment
    from qdeploy.nqm.plot import plot_catapult

    config = CatapultConfig(classes, n_train, width, multiples, steps, seed=seed)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("training", total=len(multiples) * len(MODEL_KINDS))
        result = run_catapult_experiment(config, on_run_done=lambda _run: progress.advance(task))
    png = plot_catapult(result, out_dir / "catapult.png")
    json_path = out_dir / "catapult.json"
    atomic.write_json(json_path, result.to_dict())

    console = Console()
    console.print(
        f"lambda0 = {result.lambda0:.6g}   2/lambda0 = {2 / result.lambda0:.6g}   4/lambda0 = {4 / result.lambda0:.6g}"
    )
    table = Table(title=f"best test accuracy, digits {classes[0]} vs {classes[1]}, width {width}")
    table.add_column("eta*lambda0/2", justify="right")
    table.add_column("eta", justify="right")
    for header in ("NN", "NQM", "linear"):
        table.add_column(header, justify="right")
    for row in result.accuracy_table():
        cells = []
        for kind in MODEL_KINDS:
            accuracy, regime = row[kind]["best_test_accuracy"], row[kind]["regime"]
            cells.append(regime if accuracy is None else f"{accuracy:.3f} {regime}")
        table.add_row(f"{row['multiple']:g}", f"{row['lr']:.4g}", *cells)
    print_table(console, table)
    console.print(f"wrote {png} and {json_path}")
