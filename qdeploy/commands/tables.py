"""Tables that stay whole in a log: numbers are never cut to "…".

Rich fits a table into the console width, 80 columns when the output is not a terminal (a
log, CI), by shrinking columns and ellipsising their cells, numbers included. A table wider
than the console is printed at the width it needs instead: a log line may be long, but
every figure in it is the figure.
"""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

UNLIMITED = 10_000  # columns: wide enough to measure any table at its natural width


def print_table(console: Console, table: Table) -> None:
    """Print `table` at its natural width when the console is narrower."""
    needed = Measurement.get(console, console.options.update_width(UNLIMITED), table).maximum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width
