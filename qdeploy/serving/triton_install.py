"""Get NVIDIA's Triton Inference Server without touching the project's environment.

PyPI's `nvidia-pytriton` wheel bundles a real `tritonserver` (2.51), its shared libraries,
the Python backend and backend stubs for CPython 3.8-3.13. Installing the wheel with pip would
pull numpy back below 2 (it declares `numpy<2`), so `install_triton` only downloads it
(`pip download --no-deps`) and unpacks it into a cache folder (QDEPLOY_TRITON_HOME, default
~/.cache/qdeploy/triton). Zip archives drop the executable bits, which are restored, and the
stub for the running Python is placed next to `libtriton_python.so`, where the backend looks
for it, in a backend folder per Python version.

No second environment is needed: the stub runs the project's own interpreter and packages
(see `stub_environment`), and the generated model.py exchanges tensors with the stub through
DLPack, which works with numpy 2 (the stub's numpy path, `as_numpy` and `Tensor(name, array)`,
returns zeros and empty tensors under numpy 2).
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qdeploy.atomic import staged_directory, write_json
from qdeploy.errors import QDeployError

WHEEL = "nvidia-pytriton==0.7.0"
HOME_ENV = "QDEPLOY_TRITON_HOME"
SITE_DIRS_ENV = "QDEPLOY_SITE_DIRS"  # read by the generated model.py: site dirs whose .pth files it processes
SYS_PATH_ENV = "QDEPLOY_SYS_PATH"  # read by model.py: this process's sys.path, put first (the stub drops PYTHONPATH)
_FOLDER = "nvidia-pytriton-0.7.0"
_SERVER = Path("pytriton/tritonserver/bin/tritonserver")
_LIBS = Path("nvidia_pytriton.libs")
_PYTHON_BACKEND = Path("pytriton/tritonserver/backends/python")
_STUBS = Path("pytriton/tritonserver/python_backend_stubs")
_STUB = "triton_python_backend_stub"


def default_home() -> Path:
    """Where Triton is unpacked: $QDEPLOY_TRITON_HOME, else ~/.cache/qdeploy/triton."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "qdeploy" / "triton").expanduser()


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class TritonInstall:
    """An unpacked nvidia-pytriton wheel: the server binary, its libraries and backend folders."""

    root: Path

    @property
    def server(self) -> Path:
        return self.root / _SERVER

    @property
    def libs(self) -> Path:
        return self.root / _LIBS

    @property
    def backends(self) -> Path:
        """--backend-directory for this Python: `python/` holds the backend and this Python's stub."""
        return self.root / f"backends-py{_python_tag()}"

    def is_complete(self) -> bool:
        return self.server.is_file() and (self.backends / "python" / _STUB).is_file()


def _check_platform() -> None:
    """Linux x86_64, and a libpython3.X.so for the Python-backend stub to link."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise QDeployError(f"the nvidia-pytriton wheel is for Linux x86_64, not {sys.platform} {platform.machine()}; "
                           "use `qdeploy serve --server embedded` or NVIDIA's Triton container")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") and ctypes.util.find_library(f"python{_python_tag()}") is None:
        raise QDeployError(f"Triton's Python-backend stub needs libpython{_python_tag()}.so, and this Python "
                           f"({sys.executable}) is built without it; use a Python built with --enable-shared")


def find_triton(home: str | Path | None = None) -> TritonInstall:
    """The Triton unpacked under `home` for the running Python; a one-line error says how to get it."""
    install = TritonInstall(Path(home or default_home()) / _FOLDER)
    if not install.is_complete():
        raise QDeployError(f"Triton Inference Server is not installed in {install.root.parent} for Python "
                           f"{_python_tag()}; run `qdeploy triton install` (or use --server embedded)")
    return install


def _download(dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(dest), WHEEL]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("nvidia_pytriton-*.whl"))
    if result.returncode != 0 or not wheels:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise QDeployError(f"`pip download --no-deps {WHEEL}` failed: {lines[-1]}")
    return wheels[0]


def _make_executable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _add_backend_for_this_python(root: Path) -> None:
    """backends-pyX.Y/python/: the Python backend with the stub of this Python beside it."""
    stub = root / _STUBS / _python_tag() / _STUB
    if not stub.is_file():
        available = sorted(p.name for p in (root / _STUBS).iterdir() if (p / _STUB).is_file())
        raise QDeployError(f"{WHEEL} has no Python-backend stub for Python {_python_tag()} (it has "
                           f"{', '.join(available)}); run qdeploy with one of those")
    with staged_directory(root / f"backends-py{_python_tag()}") as stage:
        shutil.copytree(root / _PYTHON_BACKEND, stage / "python")
        shutil.copy2(stub, stage / "python" / _STUB)
        _make_executable(stage / "python" / _STUB)


def install_triton(home: str | Path | None = None, wheel: str | Path | None = None) -> TritonInstall:
    """Unpack Triton into `home` (downloading the wheel unless given) and set it up for this Python.

    Idempotent: a complete install is returned as it is; an install made by another Python
    version gets this version's stub added. Nothing is left half-written on failure.
    """
    _check_platform()
    home = Path(home or default_home())
    install = TritonInstall(home / _FOLDER)
    if install.is_complete():
        return install
    if not install.server.is_file():
        with tempfile.TemporaryDirectory(prefix="qdeploy-triton-") as tmp:
            wheel_path = Path(wheel) if wheel else _download(Path(tmp))
            if not wheel_path.is_file():
                raise QDeployError(f"wheel {wheel_path} does not exist; omit it to download {WHEEL}")
            with staged_directory(install.root) as stage:
                try:
                    with zipfile.ZipFile(wheel_path) as archive:
                        archive.extractall(stage)
                except zipfile.BadZipFile as exc:
                    raise QDeployError(f"{wheel_path} is not a wheel ({exc}); delete it and retry") from exc
                if not (stage / _SERVER).is_file():
                    raise QDeployError(f"{wheel_path.name} holds no {_SERVER}; it is not {WHEEL}")
                for executable in [stage / _SERVER, *(stage / _STUBS).glob(f"*/{_STUB}")]:
                    _make_executable(executable)
                write_json(stage / "qdeploy-install.json", {"wheel": wheel_path.name, "requirement": WHEEL})
    _add_backend_for_this_python(install.root)
    return install


def stub_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `tritonserver` under which the Python-backend stub runs this interpreter.

    The stub links `libpython3.X.so.1.0` dynamically; with the running Python's library first
    on LD_LIBRARY_PATH and PYTHONHOME at its prefix, the stub embeds this very Python (not
    whichever the system has), and PYTHONPATH gives it this process's sys.path (a virtual
    environment's packages included; the stub itself ignores PYTHONPATH, so model.py puts the
    same list first in its sys.path). Site folders are also passed on so model.py can process
    their .pth files (editable installs).
    """
    env = dict(os.environ if base is None else base)
    libraries = [str(install.libs)]
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and sysconfig.get_config_var("LIBDIR"):
        libraries.insert(0, sysconfig.get_config_var("LIBDIR"))
    if env.get("LD_LIBRARY_PATH"):
        libraries.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    env["PYTHONHOME"] = sys.base_prefix if sys.base_prefix == sys.base_exec_prefix else \
        os.pathsep.join([sys.base_prefix, sys.base_exec_prefix])
    env["PYTHONPATH"] = env[SYS_PATH_ENV] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    env[SITE_DIRS_ENV] = os.pathsep.join(d for d in site_dirs if Path(d).is_dir())
    return env
