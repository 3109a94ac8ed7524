"""The live progress bar: steps, live loss / val accuracy / lr / throughput (rich, rank 0 only)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_WIDTH = 140  # columns of the bar's line when the output is not a terminal


class ProgressBar:
    """A rich progress bar over optimizer steps; disabled, every call is a no-op."""

    def __init__(self, total_steps: int, completed: int, enabled: bool, console: Console | None = None):
        console = console or Console()
        if not console.is_terminal:  # a log: one line at the width the bar needs, so no number is cut to "…"
            console = Console(file=console.file, width=max(console.width, LOG_WIDTH))
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not enabled,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=completed, status="")
        self._acc = "-"

    def __enter__(self) -> "ProgressBar":
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def step(self, step: int, epoch: int, loss: float, lr: float, samples_per_s: float) -> None:
        status = f"epoch {epoch + 1}  loss {loss:.4f}  val acc {self._acc}  lr {lr:.2e}  {samples_per_s:.0f} img/s"
        self._progress.update(self._task, completed=step, status=status)

    def evaluated(self, accuracy: float) -> None:
        self._acc = f"{100 * accuracy:.2f}%"
