"""TensorRT import, version rules and the compatibility checks shared by the builder and the runtime.

TensorRT cannot be assumed anywhere: it needs an NVIDIA GPU, and its pip wheels are only
placeholders on package indexes without NVIDIA's libraries. Everything that needs it goes
through import_tensorrt(), so a missing or broken install is one clear error, not an
ImportError deep inside a command. The version rules (which majors, what each supports) are
plain functions of a version tuple so that they are tested without TensorRT.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from qdeploy.errors import QDeployError

Version = tuple[int, int, int]

SUPPORTED_MAJORS = (10, 11)
# Minor versions of TensorRT 10 that features need (none of them is missing from 11).
PLUGIN_OVER_LOCAL_FUNCTION = (10, 7, 0)  # the ONNX parser prefers a registered plugin to a model-local function
PYTHON_AOT_PLUGINS = (10, 9, 0)  # tensorrt.plugin.aot_impl: Python plugins baked into the engine as PTX
MIN_VERSION = PLUGIN_OVER_LOCAL_FUNCTION

# TensorRT major that ONNX Runtime's TensorRT execution provider links (libnvinfer.so.N), by
# ONNX Runtime (major, minor); later releases are assumed to keep the last entry's.
ORT_TENSORRT_MAJOR = {(1, 18): 10, (1, 31): 10}

INSTALL_HINT = ("install TensorRT 10 or 11 on a machine with an NVIDIA GPU: `pip install tensorrt` "
                "(NVIDIA's wheels, with libnvinfer), or a TensorRT tar/deb install on PYTHONPATH")


def parse_version(text: str) -> Version:
    """'10.9.0.34' -> (10, 9, 0); missing parts are 0."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    if not match:
        raise QDeployError(f"cannot read a TensorRT version from {text!r}")
    return tuple(int(part or 0) for part in match.groups())  # type: ignore[return-value]


def format_version(version: Version) -> str:
    return ".".join(str(part) for part in version)


def check_supported(version: Version) -> Version:
    """Refuse TensorRT releases qdeploy's engines and plugins are not written for."""
    if version[0] not in SUPPORTED_MAJORS:
        raise QDeployError(f"TensorRT {format_version(version)} is not supported; "
                           f"qdeploy builds engines with TensorRT {' or '.join(map(str, SUPPORTED_MAJORS))} "
                           f"(the plugins use IPluginV3 and the TensorRT 10/11 builder API)")
    if version < MIN_VERSION:
        raise QDeployError(f"TensorRT {format_version(version)} is too old: {format_version(MIN_VERSION)} or newer "
                           "is needed so that the ONNX parser maps the fused nodes to qdeploy's plugins "
                           "(older parsers inline their ONNX functions); `pip install -U tensorrt`")
    return version


def always_strongly_typed(version: Version) -> bool:
    """TensorRT 11 networks are always strongly typed: no FP16/INT8 builder flags, no calibrators."""
    return version[0] >= 11


def supports_python_aot_plugins(version: Version) -> bool:
    return version >= PYTHON_AOT_PLUGINS


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module after checking its version, or a QDeployError saying how to get one."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise QDeployError(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc
    except OSError as exc:  # the Python package is there, libnvinfer is not
        raise QDeployError(f"TensorRT's libraries cannot be loaded ({exc}); {INSTALL_HINT}") from exc
    version = getattr(trt, "__version__", None)
    if version is None:
        raise QDeployError(f"the installed `tensorrt` package has no version (a placeholder wheel?); {INSTALL_HINT}")
    check_supported(parse_version(version))
    return trt


def tensorrt_version(trt: ModuleType) -> Version:
    return parse_version(trt.__version__)


def ort_tensorrt_major(ort_version: str) -> int | None:
    """TensorRT major of ONNX Runtime's TensorRT provider for an onnxruntime(-gpu) version, if known."""
    major, minor, _ = parse_version(ort_version)
    known = [key for key in sorted(ORT_TENSORRT_MAJOR) if key <= (major, minor)]
    return ORT_TENSORRT_MAJOR[known[-1]] if known else None


def ort_compatibility_note(version: Version, ort_version: str | None) -> str | None:
    """Why engines of this TensorRT cannot be shared with ONNX Runtime's TensorRT provider, or None."""
    if ort_version is None:
        return None
    ort_major = ort_tensorrt_major(ort_version)
    if ort_major is None or ort_major == version[0]:
        return None
    return (f"onnxruntime {ort_version}'s TensorRT provider links TensorRT {ort_major} (libnvinfer.so.{ort_major}), "
            f"not {version[0]}: run this plan with qdeploy's TensorRT engine or trtexec, not with --backend ort-trt, "
            f"and do not put TensorRT {version[0]}'s libraries before TensorRT {ort_major}'s on LD_LIBRARY_PATH "
            "in a process that uses both")


def installed_ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of CUDA device 0, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise QDeployError("no CUDA GPU is visible; TensorRT engines are built on the GPU they will run on")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"
