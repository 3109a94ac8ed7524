"""Atomic file and folder writes: readers see the old artifact or the new one, never half.

Every artifact qdeploy writes (weights, configs, ONNX files, engines, reports) goes through
here, so a crash or an error mid-write leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Reports and configs: indented, keys in a stable order, newline-terminated."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render a matplotlib figure to PNG in memory, then write it atomically and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return Path(path)


@contextlib.contextmanager
def staged_directory(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `dest` only if the block succeeds.

    On error the staging folder is removed and `dest` (if any) is untouched. Files already
    in `dest` that the block does not write are dropped: the folder is one artifact.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial"))
    try:
        yield stage
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
            os.replace(dest, old / dest.name)
            os.replace(stage, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
