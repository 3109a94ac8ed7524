"""One writer for every benchmark's JSON report: its figures, the settings it ran with, the machine."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from qdeploy import atomic


def write_report(path: Path, args: argparse.Namespace, console: Console, machine: dict[str, Any] | None = None,
                 **content: Any) -> None:
    """Write `content`, the run's settings (its arguments; paths as text) and the machine (platform, torch,
    plus `machine`) to `path` atomically, and say where: a figure means little without how it was taken."""
    report = {**content, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": {"platform": platform.platform(), "torch": torch.__version__, **(machine or {})}}
    atomic.write_text(path, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {path}")
