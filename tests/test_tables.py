"""qdeploy.commands.tables: tables fit a log's 80 columns where their figures stay whole there."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.table import Table

from qdeploy.commands.tables import print_table, whole_width

FIGURE = re.compile(r"\d+\.\d+(?:e-\d+)?[x%]?")  # 1.23x, 2.0e-06, 99.2%, 8.82


def _printed(table: Table, width: int = 80) -> list[str]:
    out = io.StringIO()
    print_table(Console(file=out, width=width, force_terminal=False, color_system=None), table)
    return out.getvalue().rstrip("\n").split("\n")


def _summary() -> tuple[Table, list[str]]:
    """A two-column table like the pipeline's: a label and a long result of prose around figures."""
    table = Table(title="qdeploy pipeline: efficientnet_lite0 on digits-shift (347 s)")
    table.add_column("")
    table.add_column("result")
    rows = [("latency plan (budget 1.25x)", "3 of 16 layers; predicted b1 1.12x, b32 1.14x; measured b1 1.21x, "
                                            "b32 1.20x; 80% bound b1 1.23x, b32 1.23x (plan.json)"),
            ("parity fused.onnx (ORT CPU, fp32)", "pass: max err 2.0e-06 of scale, top-1 agree 100.0%, acc 99.2%"),
            ("latency decomposed ort-cpu, batch 32", "8.82 ms vs base 7.51 ms (1.17x, base ort-cpu)")]
    for row in rows:
        table.add_row(*row)
    return table, [figure for _, text in rows for figure in FIGURE.findall(text)]


def test_prose_wraps_inside_its_cell_within_80_columns_and_every_figure_stays_whole() -> None:
    table, figures = _summary()
    lines = _printed(table)
    assert max(len(line) for line in lines) <= 80  # its natural width is about 120
    text = "\n".join(lines)
    assert "…" not in text
    for figure in figures:  # each printed whole, on one line (a wrap falls between words)
        assert re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d.])", text), figure


def test_a_table_of_figures_too_wide_for_the_console_keeps_its_natural_width() -> None:
    table = Table()
    for index in range(12):
        table.add_column(f"column {index}", justify="right", no_wrap=True)
    figures = [f"{1 + index / 1000:.3f}x" for index in range(12)]
    table.add_row(*figures)
    lines = _printed(table)
    assert max(len(line) for line in lines) > 80 and "…" not in "\n".join(lines)
    assert all(figure in lines[3] for figure in figures)  # one row, every figure whole
    assert whole_width(Console(width=80), table) == max(len(line) for line in lines)
