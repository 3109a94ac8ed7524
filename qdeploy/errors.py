"""One exception type for problems the user can fix.

The CLI prints these as a single line (no traceback), so every message must name the
problem and the fix.
"""


class QDeployError(Exception):
    """A user-facing error: bad input, a missing file or plugin, an unknown name."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors.

    Library errors (torch.export, ONNX, ONNX Runtime) span pages; the first line names the
    problem, and the full text stays in the chained traceback.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
