"""One exception type for problems the user can fix.

The CLI prints these as a single line (no traceback), so every message must name the
problem and the fix.
"""


class QDeployError(Exception):
    """A user-facing error: bad input, a missing file or plugin, an unknown name."""
