"""The CUDA kernel compiles with nvcc (warnings as errors) and its launcher refuses bad arguments.

Compiled once per session as a shared library with PTX only (no ptxas: quick, no GPU needed);
the argument checks run before any CUDA call, so ctypes exercises them on a CPU machine. The
C++ TensorRT plugin is syntax-checked too where TensorRT's headers are found ($TensorRT_ROOT).
The numerical check of the kernel needs a GPU: plugins/cuda/test_kernel_gpu.py --check.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
NVCC = shutil.which("nvcc")
WARNINGS_AS_ERRORS = ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror"]

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CUDA toolkit not installed)")


class Params(ctypes.Structure):
    """AtrousQuadParams of atrous_quad.cuh, field for field (all int32)."""

    _fields_ = [(name, ctypes.c_int32) for name in (
        "dtype", "batch", "in_channels", "in_height", "in_width", "rank", "out_channels", "groups",
        "kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w",
        "pad_top", "pad_left", "pad_bottom", "pad_right")]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("nvcc") / "libatrous_quad.so"
    command = [NVCC, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", *WARNINGS_AS_ERRORS,
               "-gencode=arch=compute_90,code=compute_90", str(PLUGINS / "cuda" / "atrous_quad.cu"), "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    lib = ctypes.CDLL(str(out))
    lib.atrousQuadForward.restype = ctypes.c_int
    lib.atrousQuadForward.argtypes = [ctypes.POINTER(Params)] + [ctypes.c_void_p] * 9
    lib.atrousQuadStatusString.restype = ctypes.c_char_p
    return lib


def header_constant(name: str) -> int:
    text = (PLUGINS / "cuda" / "atrous_quad.cuh").read_text()
    return int(re.search(rf"\b{name}\s*=?\s*(\d+)", text).group(1))


def valid_params(**changes: int) -> Params:
    values = dict(dtype=0, batch=2, in_channels=8, in_height=10, in_width=10, rank=8, out_channels=8, groups=8,
                  kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, dilation_h=3, dilation_w=3,
                  pad_top=3, pad_left=3, pad_bottom=3, pad_right=3)
    return Params(**(values | changes))


def call(lib: ctypes.CDLL, params: Params, wu: bool = True) -> int:
    dummy = 16  # never dereferenced: the checks fail before any launch
    pointers = [dummy, dummy, None, dummy, None, dummy if wu else None, None, dummy]
    return lib.atrousQuadForward(ctypes.byref(params), *pointers, None)


def test_kernel_compiles_without_warnings(library: ctypes.CDLL) -> None:
    assert library.atrousQuadStatusString(0) == b"success"


@pytest.mark.parametrize("changes, wu, status_name", [
    ({"groups": 3}, True, "ATROUS_QUAD_INVALID_ARGUMENT"),                  # groups must divide Cin, R, Cout
    ({"out_channels": 16}, False, "ATROUS_QUAD_INVALID_ARGUMENT"),          # no U: Cout must equal R
    ({"rank": 8 * 65}, True, "ATROUS_QUAD_RANK_TOO_LARGE"),                 # R / g over the register budget
    ({"pad_top": 0, "pad_bottom": 0, "in_height": 4}, True, "ATROUS_QUAD_INVALID_ARGUMENT"),  # empty output
    ({"dtype": 7}, True, "ATROUS_QUAD_INVALID_ARGUMENT"),
    ({"stride_w": 0}, True, "ATROUS_QUAD_INVALID_ARGUMENT"),
    ({"pad_left": -1}, True, "ATROUS_QUAD_INVALID_ARGUMENT"),
    ({"batch": 0}, True, "ATROUS_QUAD_SUCCESS"),                             # nothing to do, nothing launched
])
def test_launcher_argument_checks(library: ctypes.CDLL, changes: dict, wu: bool, status_name: str) -> None:
    assert call(library, valid_params(**changes), wu) == header_constant(status_name)


def test_plugin_compiles_against_tensorrt_headers() -> None:
    root = os.environ.get("TensorRT_ROOT") or os.environ.get("TENSORRT_ROOT")
    if not root or not (Path(root) / "include" / "NvInferRuntime.h").is_file():
        pytest.skip("TensorRT headers not found (set TensorRT_ROOT to a TensorRT install; the pip wheels have none)")
    command = [NVCC, "-std=c++17", "-x", "cu", *WARNINGS_AS_ERRORS, "-I", str(Path(root) / "include"),
               "-I", str(PLUGINS / "cuda"), "-Xcompiler", "-fsyntax-only", "-c",
               str(PLUGINS / "cpp" / "atrous_quad_plugin.cpp"), "-o", os.devnull]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_plugins_build_makes_a_library_with_the_entry_points(tmp_path: Path) -> None:
    """`qdeploy plugins build` end to end (CMake + nvcc + TensorRT headers): one library exporting getCreators."""
    root = os.environ.get("TensorRT_ROOT") or os.environ.get("TENSORRT_ROOT")
    if not root or not (Path(root) / "include" / "NvInferRuntime.h").is_file() or shutil.which("cmake") is None:
        pytest.skip("needs cmake and a TensorRT install with headers in TensorRT_ROOT")
    from qdeploy.runtime.plugin_library import build_plugin_library

    library = build_plugin_library(root, tmp_path / "build", "90-virtual", output=tmp_path / "lib.so")
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    assert {"getCreators", "setLoggerFinder"} <= set(re.findall(r" T (\w+)", symbols))
