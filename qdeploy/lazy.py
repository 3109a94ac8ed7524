"""Package names imported on first use (PEP 562), so importing a package stays cheap.

`qdeploy.nqm` and `qdeploy.export` re-export names from submodules that import torch,
onnxscript or timm; the CLI and the server import these packages for a constant or a
light helper, and should not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """(__all__, __getattr__, __dir__) for `package`, whose `exports` map name -> submodule."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
