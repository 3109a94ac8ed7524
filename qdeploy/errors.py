"""One exception type for problems the user can fix.

The CLI and the benchmark scripts print these as a single line (no traceback), so every
message must name the problem and the fix.
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class QDeployError(Exception):
    """A user-facing error: bad input, a missing file or plugin, an unknown name."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors.

    Library errors (torch.export, ONNX, ONNX Runtime) span pages; the first line names the
    problem, and the full text stays in the chained traceback.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def exit_on_user_error(run: Callable[[], T]) -> T:
    """Run `run`; a QDeployError ends the process with `error: <message>` on stderr and status 2."""
    try:
        return run()
    except QDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
