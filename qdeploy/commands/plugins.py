"""`qdeploy plugins build|path`: compile the C++ TensorRT plugin library and say where it is."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from qdeploy.runtime.plugin_library import build_plugin_library, plugin_library_path


@click.group("plugins")
def plugins() -> None:
    """The TensorRT plugins for fused quadratic layers (plugins/ in the source tree)."""


@plugins.command("build")
@click.option("--tensorrt-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="TensorRT install with include/ and lib/. [default: $TensorRT_ROOT]")
@click.option("--cuda-arch", default=None, help="CMAKE_CUDA_ARCHITECTURES, e.g. 90 or '80;90'. [default: 75-90]")
@click.option("--build-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="CMake build folder. [default: beside the library]")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel compile jobs. [default: all CPUs]")
def build(tensorrt_root: Path | None, cuda_arch: str | None, build_dir: Path | None, jobs: int | None) -> None:
    """Compile the IPluginV3 plugin library with CMake and nvcc (needs a TensorRT install with headers)."""
    console = Console()
    with console.status("building the TensorRT plugin library (CMake + nvcc)..."):
        library = build_plugin_library(tensorrt_root, build_dir, cuda_arch, jobs)
    console.print(f"built {library}")
    console.print(f"trtexec: --dynamicPlugins={library}   Triton: LD_PRELOAD={library}")


@plugins.command("path")
@click.option("--check", is_flag=True, help="Exit with status 1 when the library has not been built.")
def path(check: bool) -> None:
    """Print where the C++ plugin library is ($QDEPLOY_PLUGIN_LIBRARY or the user cache)."""
    library = plugin_library_path()
    click.echo(str(library))
    if check and not library.is_file():
        click.echo(f"{library} has not been built; run `qdeploy plugins build`", err=True)
        raise SystemExit(1)
