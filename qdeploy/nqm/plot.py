"""The catapult figure: loss curves and top kernel eigenvalue per model and learning rate."""

from __future__ import annotations

from pathlib import Path

from qdeploy import atomic
from qdeploy.nqm.experiment import MODEL_KINDS, CatapultResult

TITLES = {"nn": "network", "nqm": "quadratic model (NQM)", "linear": "linearized model"}


def plot_catapult(result: CatapultResult, path: str | Path) -> Path:
    """Write a 2 x 3 PNG: training loss (log scale) on top, top eigenvalue of `J J^T / n`
    below with `2/eta` dashed in the same colour, one column per model kind.

    Diverging curves are clipped at 1e3 times the initial loss and 2.2 lambda0 so that the
    catapult spikes, which stay within that range, remain readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    colours = plt.get_cmap("viridis")
    multiples = result.config.multiples
    fig, axes = plt.subplots(2, len(MODEL_KINDS), figsize=(15, 8), sharex=True)
    for column, kind in enumerate(MODEL_KINDS):
        loss_axis, sharpness_axis = axes[0, column], axes[1, column]
        for index, multiple in enumerate(multiples):
            run = result.run(kind, multiple)
            colour = colours(index / max(len(multiples) - 1, 1))
            label = f"eta = {multiple:g} x 2/lambda0 ({run.regime.value})"
            loss_axis.plot(run.losses, color=colour, label=label)
            sharpness_axis.plot(run.sharpness_steps, run.sharpness, color=colour)
            sharpness_axis.axhline(2 / run.lr, color=colour, linestyle="--", linewidth=0.8)
        initial_loss = result.runs[0].losses[0]
        loss_axis.set(yscale="log", title=TITLES[kind], ylabel="training loss", ylim=(None, 1e3 * initial_loss))
        sharpness_axis.set(xlabel="step", ylabel="top eigenvalue of J J^T / n", ylim=(0, 2.2 * result.lambda0))
        loss_axis.legend(fontsize=7)
    fig.suptitle(f"Catapult dynamics, full-batch GD on squared loss (lambda0 = {result.lambda0:.4g}; dashed: 2/eta)")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=100)
