"""One exception type for problems the user can fix, and how the CLI ends on any error.

The CLI and the benchmark scripts print a QDeployError as a single line (no traceback), so
every message must name the problem and the fix. Anything else is a bug: exit status 3 and a
request to report it. `--debug` or QDEPLOY_DEBUG=1 prints the chained traceback of either.
"""

from __future__ import annotations

import os
import sys
import traceback
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


def debugging() -> bool:
    return os.environ.get("QDEPLOY_DEBUG", "") not in ("", "0")


def exit_on_user_error(run: Callable[[], T], debug: bool = False, passthrough: tuple[type, ...] = ()) -> T:
    """Run `run`; a QDeployError ends the process with `error: <message>` on stderr and status 2,
    any other exception (but `passthrough`) with a request to report it and status 3."""
    debug = debug or debugging()
    try:
        return run()
    except passthrough:
        raise
    except QDeployError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the last stop: a bug gets a report request, not a bare trace
        if debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {first_line(exc)}; this is a qdeploy bug, please report it "
              "with the output of the same command run with --debug (or QDEPLOY_DEBUG=1)", file=sys.stderr)
        sys.exit(3)
