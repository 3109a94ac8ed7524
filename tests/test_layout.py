"""Dependency direction: each sub-package imports only the stages below it (read from the source with ast).

Data flows model -> adapted model -> store -> training / export -> runtime -> serving; the
workflows join the stages, and the CLI sits on top. Shared names (I/O names, input size, thread control, the comparator)
live in top-level neutral modules that every package may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qdeploy

PACKAGE = Path(qdeploy.__file__).parent

# Sub-package -> the sub-packages it may import (top-level modules are neutral: always allowed).
ALLOWED = {
    "layers": set(),
    "models": set(),
    "adaptation": {"layers", "models"},
    "data": {"models"},
    "store": {"layers", "models", "adaptation"},
    "nqm": {"data"},
    "training": {"layers", "models", "adaptation", "data", "nqm", "store"},
    "export": {"layers", "models", "adaptation", "data", "store"},
    "runtime": {"adaptation", "data", "store"},
    "serving": {"runtime", "store"},
    "workflows": {"layers", "models", "adaptation", "data", "store", "training", "export", "runtime"},
    "commands": {"layers", "models", "adaptation", "data", "store", "nqm", "training", "export", "runtime",
                 "serving", "workflows"},
}
TOP_LEVEL_MAY_IMPORT = {"cli": {"commands"}}  # the entry point loads the sub-commands


def imported_modules(path: Path, root: Path) -> set[str]:
    """Absolute qdeploy module names `path` imports, at module level or inside functions."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    if package[-1:] == ["__init__"]:
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            for alias in node.names:  # `from qdeploy import store` imports a module; `from x import name` does not
                candidate = root.parent.joinpath(*f"{module}.{alias.name}".split("."))
                if candidate.is_dir() or candidate.with_suffix(".py").is_file():
                    found.add(f"{module}.{alias.name}")
    return {name for name in found if name.split(".")[0] == root.name}


def wrong_way_edges(root: Path) -> list[str]:
    """'file: imports module' for every import that runs against the layout."""
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        source = rel.parts[0] if len(rel.parts) > 1 else None
        for module in sorted(imported_modules(path, root)):
            target = module.split(".")[1] if module.count(".") else None
            if target not in packages or target == source:
                continue  # a neutral top-level module, or the package itself
            if source is None:
                allowed = TOP_LEVEL_MAY_IMPORT.get(path.stem, set())
            else:
                allowed = ALLOWED.get(source, set())
            wrong = target not in allowed
            if wrong:
                problems.append(f"{rel}: imports {module}")
    return problems


def test_every_import_runs_with_the_data_flow() -> None:
    assert set(ALLOWED) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert wrong_way_edges(PACKAGE) == []


def test_a_wrong_way_import_is_found(tmp_path) -> None:
    root = tmp_path / "qdeploy"
    for package in ("runtime", "training", "export", "data", "adaptation"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "runtime" / "engine.py").write_text("def f():\n    from qdeploy.training.checkpointing import x\n")
    (root / "runtime" / "names.py").write_text("from ..export.onnx_export import INPUT_NAME\n")
    (root / "runtime" / "ok.py").write_text("from qdeploy.onnx_io import load_onnx\nfrom qdeploy import errors\n")
    (root / "data" / "splits.py").write_text("from qdeploy import adaptation\n")
    assert wrong_way_edges(root) == ["data/splits.py: imports qdeploy.adaptation",
                                     "runtime/engine.py: imports qdeploy.training.checkpointing",
                                     "runtime/names.py: imports qdeploy.export.onnx_export"]


def test_the_common_api_is_one_import_and_loads_lazily() -> None:
    import subprocess
    import sys

    code = ("import sys, qdeploy; assert 'torch' not in sys.modules; "
            "assert callable(qdeploy.adapt) and callable(qdeploy.load) and callable(qdeploy.save)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
