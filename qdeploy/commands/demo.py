"""`qdeploy demo`: the adaptation demo on the built-in model, offline, in seconds.

Shows the three promises of adaptation on a real photo: the pretrained model is right, the
adapted model equals it bit for bit at step 0, and the saved artifact reloads exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from qdeploy.adaptation import adapt
from qdeploy.data.samples import cat_photo, imagenet_top_k, preprocess_for
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadConfig
from qdeploy.models.sources import BUILTIN_DEFAULT, load_base_model
from qdeploy.store import load_model, save
from qdeploy.commands.tables import print_table


@click.command()
@click.option("--model", "model_name", default=BUILTIN_DEFAULT, show_default=True,
              help="Built-in name or timm model name (timm needs network for weights).")
@click.option("--rank", default=8, show_default=True, help="Rank of A(x), B(x) for dense layers.")
@click.option("--dilation", default=3, show_default=True, help="Dilation of the atrous factor convs.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("export/demo"), show_default=True,
              help="Folder for the adapted model (safetensors + adapter.json).")
def demo(model_name: str, rank: int, dilation: int, out: Path) -> None:
    """Adapt the built-in ImageNet EfficientNet-Lite0 and prove the zero start on a real photo."""
    console = Console()
    start = time.perf_counter()
    model = load_base_model(model_name)
    image = preprocess_for(model, cat_photo())
    with torch.no_grad():
        base_logits = model(image)

    top5 = Table(title=f"{model_name}: ImageNet top-5 for scikit-image's chelsea (a cat)")
    for column in ("class", "label", "probability"):
        top5.add_column(column)
    for index, label, prob in imagenet_top_k(base_logits):
        top5.add_row(str(index), label, f"{prob:.3f}")
    print_table(console, top5)

    model, report = adapt(model, config=QuadConfig(rank=rank, dilation=dilation))
    with torch.no_grad():
        adapted_logits = model(image)
    save(model, out)
    with torch.no_grad():
        reloaded_logits = load_model(out)(image)
    zero_start_error = (adapted_logits - base_logits).abs().max().item()
    reload_exact = torch.equal(reloaded_logits, adapted_logits)

    summary = Table(title="quadratic adaptation")
    summary.add_column("")
    summary.add_column("value")
    for label, value in report.rows():
        summary.add_row(label, value)
    summary.add_row("max |adapted - base| at step 0", f"{zero_start_error:.1e}")
    summary.add_row("saved to", str(out))
    summary.add_row("reload bit-exact", str(reload_exact))
    summary.add_row("wall time", f"{time.perf_counter() - start:.1f} s")
    print_table(console, summary)
    if zero_start_error != 0.0 or not reload_exact:
        raise QDeployError("adapted model differs from the base model at step 0; please report this bug")
