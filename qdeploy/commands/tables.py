"""Tables that stay whole in a log or a narrow terminal: numbers are never cut to "…" or split.

Rich fits a table into the console width, 80 columns when the output is not a terminal (a
log, CI), by shrinking columns and ellipsising (no-wrap columns) or folding (the others) their
cells, numbers included. `print_table` widens the console only as far as the table needs to
keep every figure whole: no-wrap columns (the numbers) at their full width, text columns at
their longest word, so prose wraps inside its cell. Printing a table at its natural width
instead kept the pipeline's two-column summary at 150 columns, which a terminal narrower than
that breaks mid-row.
"""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

UNLIMITED = 10_000  # columns: wide enough to measure any table at its natural width


def whole_width(console: Console, table: Table) -> int:
    """The narrowest console width at which no cell of `table` is cut: its natural width less what its
    wrapping columns can give up (each down to its longest word; no-wrap columns stay whole)."""
    options = console.options.update_width(UNLIMITED)
    natural = Measurement.get(console, options, table).maximum
    slack = 0
    for column in table.columns:
        if column.no_wrap or column.width is not None:
            continue
        cells = [Measurement.get(console, options, cell) for cell in (column.header, *column.cells)]
        slack += max(m.maximum for m in cells) - max(m.minimum for m in cells)
    return natural - slack


def print_table(console: Console, table: Table) -> None:
    """Print `table` within the console's width where its figures stay whole there, else at the width
    that keeps them whole."""
    width = console.width
    console.width = max(width, whole_width(console, table))
    try:
        console.print(table)
    finally:
        console.width = width
