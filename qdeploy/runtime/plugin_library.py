"""Where qdeploy's TensorRT plugins live, how the C++ library is built, and loading either kind.

Two implementations of the same three plugins (qdeploy::AtrousQuadConv, AtrousQuadProduct,
QuadLinear; see plugins/README.md):
- cpp: plugins/cpp + plugins/cuda built with CMake into one shared library exporting
  getCreators(); TensorRT loads it with load_library (trtexec: --dynamicPlugins);
- python: plugins/triton/atrous_quad_trt.py, tensorrt.plugin registrations whose AOT Triton
  kernels are compiled to PTX into the engine (TensorRT >= 10.9, triton).
Engines built with either run in plain C++ runtimes: the cpp library must then be loaded by
the runtime too, the python plugins' kernels are inside the plan.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from qdeploy.atomic import write_bytes
from qdeploy.errors import QDeployError
from qdeploy.plugin_contract import PLUGIN_NAMESPACE, PLUGIN_OPS, PLUGIN_VERSION
from qdeploy.runtime.tensorrt_support import (
    PYTHON_AOT_PLUGINS,
    format_version,
    import_tensorrt,
    supports_python_aot_plugins,
    tensorrt_version,
)

PLUGIN_KINDS = ("auto", "cpp", "python", "none")
LIBRARY_NAME = "libqdeploy_plugins.so"
PYTHON_PLUGIN_FILE = Path("triton") / "atrous_quad_trt.py"
LIBRARY_ENV = "QDEPLOY_PLUGIN_LIBRARY"
SOURCES_ENV = "QDEPLOY_PLUGIN_SOURCES"


def plugin_sources_dir() -> Path:
    """The plugins/ source folder: $QDEPLOY_PLUGIN_SOURCES, else the one beside the qdeploy package."""
    folder = Path(os.environ.get(SOURCES_ENV) or Path(__file__).resolve().parents[2] / "plugins")
    if not (folder / "CMakeLists.txt").is_file():
        raise QDeployError(f"plugin sources not found at {folder}; run from a qdeploy checkout or set "
                           f"{SOURCES_ENV} to its plugins/ folder")
    return folder


def plugin_library_path() -> Path:
    """Where the built C++ plugin library is (or will be): $QDEPLOY_PLUGIN_LIBRARY or the user cache."""
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "qdeploy" / "plugins" / LIBRARY_NAME


def find_tensorrt_root(explicit: str | os.PathLike | None = None) -> Path:
    """A TensorRT install with headers: the argument, else $TensorRT_ROOT / $TENSORRT_ROOT."""
    candidate = explicit or os.environ.get("TensorRT_ROOT") or os.environ.get("TENSORRT_ROOT")
    if not candidate:
        raise QDeployError("no TensorRT install given: pass --tensorrt-root or set TensorRT_ROOT to a TensorRT "
                           "tar/deb install with include/NvInferRuntime.h (the pip wheels carry no C++ headers)")
    root = Path(candidate).expanduser()
    headers = [root / "include" / "NvInferRuntime.h", root / "include" / "x86_64-linux-gnu" / "NvInferRuntime.h"]
    if not any(h.is_file() for h in headers):
        raise QDeployError(f"{root} has no include/NvInferRuntime.h; point --tensorrt-root at a TensorRT install "
                           "with C++ headers (the tar package, or the libnvinfer-dev deb's prefix)")
    return root


def _require_tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise QDeployError(f"`{name}` is not on PATH; it is needed to {purpose} (install it, e.g. "
                           f"{'the CUDA toolkit' if name == 'nvcc' else 'pip install cmake'})")
    return path


def build_plugin_library(tensorrt_root: str | os.PathLike | None = None, build_dir: str | os.PathLike | None = None,
                         cuda_architectures: str | None = None, jobs: int | None = None,
                         output: str | os.PathLike | None = None) -> Path:
    """Configure and compile plugins/ with CMake; copy the library atomically to `output`.

    output defaults to plugin_library_path(); cuda_architectures is CMake's list ("90",
    "80;90", ...), by default Turing to Hopper.
    """
    cmake = _require_tool("cmake", "build the plugin library")
    _require_tool("nvcc", "compile the plugin's CUDA kernel")
    root = find_tensorrt_root(tensorrt_root)
    sources = plugin_sources_dir()
    destination = Path(output) if output else plugin_library_path()
    build = Path(build_dir) if build_dir else destination.parent / "build"
    configure = [cmake, "-S", str(sources), "-B", str(build), f"-DTensorRT_ROOT={root}", "-DCMAKE_BUILD_TYPE=Release"]
    if cuda_architectures:
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}")
    compile_ = [cmake, "--build", str(build), "--parallel", str(jobs or os.cpu_count() or 1)]
    for step, command in (("configure", configure), ("build", compile_)):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise QDeployError(f"CMake {step} of the plugin library failed ({' '.join(command)}):\n{tail}")
    built = build / LIBRARY_NAME
    if not built.is_file():
        raise QDeployError(f"CMake finished but {built} is missing; look at the build folder {build}")
    write_bytes(destination, built.read_bytes())
    destination.chmod(0o755)
    return destination


@dataclass(frozen=True)
class LoadedPlugins:
    """What load_plugins() made available to TensorRT: kind "cpp", "python" or "none"."""

    kind: str
    library: Path | None = None
    ops: tuple[str, ...] = ()
    note: str = ""


def _registered_ops(trt: ModuleType) -> tuple[str, ...]:
    registry = trt.get_plugin_registry()
    return tuple(op for op in PLUGIN_OPS
                 if registry.get_creator(op, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None)


def _load_cpp(trt: ModuleType) -> LoadedPlugins:
    library = plugin_library_path()
    if not library.is_file():
        raise QDeployError(f"the C++ plugin library {library} does not exist; build it with `qdeploy plugins build "
                           "--tensorrt-root <TensorRT install>` or use --plugin python")
    handle = trt.get_plugin_registry().load_library(str(library))
    if handle is None:
        raise QDeployError(f"TensorRT could not load {library} (built against another TensorRT or CUDA?); "
                           "rebuild it with `qdeploy plugins build`")
    ops = _registered_ops(trt)
    if ops != PLUGIN_OPS:
        raise QDeployError(f"{library} registered {', '.join(ops) or 'no'} qdeploy plugins instead of "
                           f"{', '.join(PLUGIN_OPS)}; rebuild it with `qdeploy plugins build`")
    return LoadedPlugins("cpp", library, ops)


def _python_plugins_unavailable(trt: ModuleType) -> str | None:
    """Why the Python plugins cannot be used here, or None."""
    version = tensorrt_version(trt)
    if not supports_python_aot_plugins(version):
        return (f"TensorRT {format_version(version)} has no tensorrt.plugin.aot_impl "
                f"(needs {format_version(PYTHON_AOT_PLUGINS)} or newer)")
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (`pip install triton`)"
    return None


def _load_python(trt: ModuleType) -> LoadedPlugins:
    reason = _python_plugins_unavailable(trt)
    if reason:
        raise QDeployError(f"the Python plugins cannot be used: {reason}; or build the C++ library "
                           "(`qdeploy plugins build`) and use --plugin cpp")
    path = plugin_sources_dir() / PYTHON_PLUGIN_FILE
    name = "qdeploy_trt_python_plugins"
    if name not in sys.modules:  # tensorrt.plugin refuses to register an op twice
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return LoadedPlugins("python", None, PLUGIN_OPS)


def load_plugins(kind: str = "auto", trt: ModuleType | None = None) -> LoadedPlugins:
    """Make qdeploy's plugins known to TensorRT's registry; returns what was loaded.

    auto: the C++ library when it has been built, else the Python plugins when they can run,
    else none (fused nodes then fall back to their ONNX functions, the decomposed layers).
    """
    if kind not in PLUGIN_KINDS:
        raise QDeployError(f"unknown plugin kind {kind!r}; choose from {', '.join(PLUGIN_KINDS)}")
    if kind == "none":
        return LoadedPlugins("none", note="plugins not loaded (--plugin none)")
    trt = trt or import_tensorrt()
    if kind == "cpp":
        return _load_cpp(trt)
    if kind == "python":
        return _load_python(trt)
    if plugin_library_path().is_file():
        return _load_cpp(trt)
    reason = _python_plugins_unavailable(trt)
    if reason is None:
        return _load_python(trt)
    return LoadedPlugins("none", note=f"no C++ library at {plugin_library_path()} and no Python plugins ({reason}): "
                                      "fused nodes run as their decomposed ONNX functions")
