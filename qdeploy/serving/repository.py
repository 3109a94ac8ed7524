"""Triton model repositories: write them, read them back, one layout for Triton and qdeploy.

Layout (Triton's): `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/model.onnx`
(platform `onnxruntime_onnx`) or `model.plan` (`tensorrt_plan`), or, for Triton's Python
backend (`backend: "python"`), `<version>/model.py` (qdeploy's engine, triton_python_model)
beside the model file or folder it loads, named by config `parameters`. config.pbtxt is protobuf
text of Triton's `inference.ModelConfig`; it is written and parsed with the real message
type that tritonclient ships, so a file qdeploy accepts is one Triton accepts, and the
other way round.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from qdeploy import __version__
from qdeploy.atomic import staged_directory, write_text
from qdeploy.errors import QDeployError
from qdeploy.onnx_io import load_onnx
from qdeploy.runtime import TensorSpec, load_engine
from qdeploy.store.artifacts import PythonBackendParameters
from qdeploy.serving.datatypes import config_datatype, dtype_from_config

PLATFORMS = {".onnx": "onnxruntime_onnx", ".plan": "tensorrt_plan"}
MODEL_FILES = {platform: "model" + suffix for suffix, platform in PLATFORMS.items()}
CONFIG_FILE = "config.pbtxt"
PYTHON_BACKEND = "python"
TORCH_MODEL_FOLDER = "model"  # a model folder (safetensors + adapter.json) in a Python-backend version
MAX_BATCH, MAX_QUEUE_DELAY_US = 8, 100  # the dynamic batching qdeploy writes and serves by default
# ONNX domains ONNX Runtime implements itself; nodes of any other domain need a plugin
# unless the model carries a local function of that name.
_ORT_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str) -> str:
    """A model name that is safe as a folder and a URL segment; refuses path characters."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise QDeployError(f"invalid model name {name!r}: use letters, digits, '_', '-', '.' "
                           "(up to 128, no '..', no path separators)")
    return name


@functools.cache
def model_config_pb2() -> ModuleType:
    """Triton's model_config_pb2, loaded from tritonclient's files without importing grpc.

    `import tritonclient.grpc.model_config_pb2` runs tritonclient/grpc/__init__.py, which
    demands grpcio; the generated module itself needs only protobuf, so load it by path.
    """
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise QDeployError("tritonclient is not installed; `pip install tritonclient` (it ships the model-config protos)")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("qdeploy_triton_model_config_pb2", path)
    if module_spec is None or module_spec.loader is None or not path.is_file():
        raise QDeployError(f"tritonclient has no {path.name}; reinstall tritonclient>=2.40")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_config(text: str, source: str = CONFIG_FILE):
    """A ModelConfig message from protobuf text; errors name the file and line."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise QDeployError(f"{source}: {exc}") from exc


def read_config(path: str | Path):
    path = Path(path)
    return parse_config(path.read_text(encoding="utf-8"), str(path))


def _int64_fields_as_numbers(value: dict, descriptor) -> dict:
    """Undo protobuf JSON's int64-as-string in place, as Triton does for its config JSON."""
    for field in descriptor.fields:
        if field.name not in value:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            if entry.message_type is not None:
                for item in value[field.name].values():
                    _int64_fields_as_numbers(item, entry.message_type)
        elif field.message_type is not None:
            for item in value[field.name] if field.is_repeated else [value[field.name]]:
                _int64_fields_as_numbers(item, field.message_type)
        elif field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
            value[field.name] = [int(v) for v in value[field.name]] if field.is_repeated else int(value[field.name])
    return value


def config_json(config) -> dict:
    """A ModelConfig as Triton's /config endpoint returns it: proto field names, numbers as numbers."""
    from google.protobuf import json_format

    return _int64_fields_as_numbers(json_format.MessageToDict(config, preserving_proto_field_name=True),
                                    config.DESCRIPTOR)


def _onnx_specs(values, dtype_of) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, shape, dtype_of(tensor.elem_type)))
    return specs


def onnx_signature(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (minus initializers) and outputs of an ONNX ModelProto, as TensorSpecs."""
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    def dtype_of(elem_type: int) -> np.dtype:
        return np.dtype(tensor_dtype_to_np_dtype(elem_type))

    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    return _onnx_specs(inputs, dtype_of), _onnx_specs(model.graph.output, dtype_of)


def _external_data_files(model, source: Path) -> list[str]:
    """Relative paths of the weight files an ONNX model keeps beside itself."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    files = sorted({ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)})
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts or not (source.parent / name).is_file():
            raise QDeployError(f"{source} refers to external data {name!r} that is not a file beside it")
    return files


def _check_runs_in_onnxruntime(model, source: Path) -> None:
    """Refuse ONNX files whose custom nodes only a TensorRT plugin can run (e.g. trt.plugins)."""
    local = {(f.domain, f.name) for f in model.functions}
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node
                      if n.domain not in _ORT_DOMAINS and (n.domain, n.op_type) not in local})
    if foreign:
        raise QDeployError(f"{source.name} has nodes only a TensorRT plugin runs ({', '.join(foreign)}); "
                           "use the decomposed model.onnx for onnxruntime_onnx or build a model.plan")


def read_signature(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensors of a model: ONNX from its graph, plans and model folders via an engine."""
    path = Path(path)
    if not path.exists():
        raise QDeployError(f"model file {path} does not exist; run `qdeploy export` first")
    if path.suffix == ".onnx":
        return onnx_signature(load_onnx(path))
    try:
        engine = load_engine(path, "torch" if path.is_dir() else "auto")
    except QDeployError as exc:
        raise QDeployError(f"cannot read the tensors of {path} ({exc}); pass the ONNX file it was built "
                           "from as signature_from (--signature-from)") from exc
    return engine.inputs, engine.outputs


def _tensor_dims(spec: TensorSpec, max_batch: int) -> list[int]:
    """Triton dims: without the batch axis when the model batches, -1 for dynamic axes."""
    if max_batch > 0:
        if not spec.batched:
            raise QDeployError(f"tensor {spec.name!r} has no dynamic batch axis (shape {spec.shape}); "
                               "export with a dynamic batch or use max batch 0")
        shape = spec.shape[1:]
    else:
        shape = spec.shape
    return [d if isinstance(d, int) else -1 for d in shape]


def build_config(name: str, platform: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 max_batch: int = MAX_BATCH, instances: int = 1, max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
                 parameters: dict[str, str] | None = None):
    """A Triton ModelConfig for a model with these tensors.

    max_batch > 0 turns on Triton's (and qdeploy serve's) dynamic batching with the given
    queue delay; 0 serves each request as sent, with no batch axis assumed. platform
    PYTHON_BACKEND writes `backend: "python"` with `parameters` for model.py.
    """
    if max_batch < 0 or instances < 1 or max_queue_delay_us < 0:
        raise QDeployError("max batch and queue delay must be >= 0 and instances >= 1")
    pb2 = model_config_pb2()
    config = pb2.ModelConfig(name=check_model_name(name), max_batch_size=max_batch)
    if platform == PYTHON_BACKEND:
        config.backend = PYTHON_BACKEND
    else:
        config.platform = platform
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    for field, specs in ((config.input, inputs), (config.output, outputs)):
        for spec in specs:
            field.add(name=spec.name, data_type=pb2.DataType.Value(config_datatype(spec.dtype)),
                      dims=_tensor_dims(spec, max_batch))
    if max_batch > 0:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    # Python-backend instances are CPU processes; the engine inside picks its own device.
    kind = {"tensorrt_plan": pb2.ModelInstanceGroup.KIND_GPU, PYTHON_BACKEND: pb2.ModelInstanceGroup.KIND_CPU}.get(
        platform, pb2.ModelInstanceGroup.KIND_AUTO)
    config.instance_group.add(count=instances, kind=kind)
    return config


def check_config_matches(config, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], source: str) -> None:
    """Fail when config.pbtxt and the model file disagree on tensor names, types or dims."""
    pb2 = model_config_pb2()
    for kind, entries, specs, exact in (("input", config.input, inputs, True), ("output", config.output, outputs, False)):
        actual = {spec.name: spec for spec in specs}
        declared = {entry.name for entry in entries}
        if (exact and declared != set(actual)) or not declared <= set(actual):
            raise QDeployError(f"{source} lists {kind}s {sorted(declared)} but the model has {sorted(actual)}")
        for entry in entries:
            spec = actual[entry.name]
            want_dtype = dtype_from_config(pb2.DataType.Name(entry.data_type))
            dims = _tensor_dims(spec, config.max_batch_size)
            dims_agree = len(dims) == len(entry.dims) and all(
                a == b or -1 in (a, b) for a, b in zip(dims, entry.dims))
            if want_dtype != spec.dtype or not dims_agree:
                raise QDeployError(f"{source}: {kind} {entry.name!r} is {pb2.DataType.Name(entry.data_type)} "
                                   f"{list(entry.dims)} but the model has {spec.dtype} {dims} "
                                   f"(max_batch_size {config.max_batch_size})")


def plugin_notes(platform: str, plugin_lib: str | Path | None) -> list[str]:
    """How Triton loads the TensorRT plugin library for this model, as lines of text."""
    if plugin_lib is None:
        return []
    lib = str(plugin_lib)
    if platform != "tensorrt_plan":
        return [f"ONNX Runtime runs the quadratic nodes from their ONNX function bodies: {lib} is only "
                "needed for TensorRT plans."]
    return [f"This plan needs the TensorRT plugin library {lib}. Load it into Triton with either",
            f'  tritonserver --model-repository=<repo> --backend-config=tensorrt,plugins="{lib}"',
            f"  LD_PRELOAD={lib} tritonserver --model-repository=<repo>",
            "The library must be built against the TensorRT version of the Triton image."]


def write_triton_model(repo: str | Path, name: str, model_path: str | Path, *, max_batch: int = MAX_BATCH,
                       instances: int = 1, max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
                       plugin_lib: str | Path | None = None, signature_from: str | Path | None = None,
                       version: int = 1, backend: str = "platform", engine_backend: str = "auto",
                       threads: int = 0) -> Path:
    """Write `<repo>/<name>/config.pbtxt` and `<repo>/<name>/<version>/model.{onnx,plan}`.

    Tensor names, types and dims come from the model file (ONNX graph) or, for a TensorRT
    plan this machine cannot open, from `signature_from` (the ONNX it was built from). The
    version folder is replaced atomically; other versions are kept. Returns the model folder.

    backend "platform" writes the file for Triton's own backend of its kind (onnxruntime_onnx,
    tensorrt_plan); "python" writes a Triton Python-backend model: model.py runs the file (or
    a model folder, on PyTorch) with qdeploy's `engine_backend`, `threads` and `plugin_lib`.
    """
    model_path = Path(model_path)
    if backend not in ("platform", PYTHON_BACKEND):
        raise QDeployError(f"unknown Triton backend {backend!r}; use 'platform' or 'python'")
    if backend == PYTHON_BACKEND:
        return _write_python_model(repo, name, model_path, max_batch=max_batch, instances=instances,
                                   max_queue_delay_us=max_queue_delay_us, plugin_lib=plugin_lib,
                                   signature_from=signature_from, version=version,
                                   engine_backend=engine_backend, threads=threads)
    if not model_path.is_file():
        raise QDeployError(f"model file {model_path} does not exist; run `qdeploy export` first")
    platform = PLATFORMS.get(model_path.suffix)
    if platform is None:
        raise QDeployError(f"{model_path.name}: Triton serves .onnx (onnxruntime_onnx) or .plan (tensorrt_plan) files")
    extra_files: list[str] = []
    if platform == "onnxruntime_onnx":
        if signature_from is not None:
            raise QDeployError("signature_from is for TensorRT plans; an ONNX file names its own tensors")
        model = load_onnx(model_path)
        _check_runs_in_onnxruntime(model, model_path)
        inputs, outputs = onnx_signature(model)
        extra_files = _external_data_files(model, model_path)
    else:
        inputs, outputs = read_signature(signature_from or model_path)
    config = build_config(name, platform, inputs, outputs, max_batch, instances, max_queue_delay_us)
    files = {MODEL_FILES[platform]: model_path, **{extra: model_path.parent / extra for extra in extra_files}}
    _write_model_folder(repo, name, version, config, [model_path.name, *plugin_notes(platform, plugin_lib)], files)
    return Path(repo) / name


def _write_python_model(repo: str | Path, name: str, model_path: Path, *, max_batch: int, instances: int,
                        max_queue_delay_us: int, plugin_lib: str | Path | None, signature_from: str | Path | None,
                        version: int, engine_backend: str, threads: int) -> Path:
    """A Python-backend model: model.py (qdeploy's engine in Triton), the model, its parameters."""
    from qdeploy.runtime import BACKENDS

    if engine_backend not in BACKENDS:
        raise QDeployError(f"unknown engine backend {engine_backend!r}; choose from {', '.join(BACKENDS)}")
    if not model_path.exists():
        raise QDeployError(f"model {model_path} does not exist; run `qdeploy export` first")
    files: dict[str, Path] = {}
    if model_path.is_dir():  # an adapted or trained model folder, run by PyTorch
        model_file = TORCH_MODEL_FOLDER
        files[model_file] = model_path
    elif model_path.suffix in PLATFORMS:
        model_file = MODEL_FILES[PLATFORMS[model_path.suffix]]
        files[model_file] = model_path
        if model_path.suffix == ".onnx":
            files.update({extra: model_path.parent / extra
                          for extra in _external_data_files(load_onnx(model_path), model_path)})
    else:
        raise QDeployError(f"{model_path.name}: the Python backend serves .onnx, .plan or model folders")
    inputs, outputs = read_signature(signature_from or model_path)
    parameters = PythonBackendParameters(model_file, engine_backend, threads,
                                         (str(Path(plugin_lib).resolve()),) if plugin_lib is not None else ())
    config = build_config(name, PYTHON_BACKEND, inputs, outputs, max_batch, instances, max_queue_delay_us,
                          parameters.to_config())
    files["model.py"] = Path(__file__).with_name("triton_python_model.py")
    _write_model_folder(repo, name, version, config,
                        [f"{model_path.name} for Triton's Python backend: model.py runs qdeploy's "
                         f"{engine_backend} engine.",
                         "Start Triton with `qdeploy serve --server triton`: its environment gives the backend",
                         "the Python and packages qdeploy runs with."], files)
    return Path(repo) / name


def _write_model_folder(repo: str | Path, name: str, version: int, config, header: list[str],
                        files: dict[str, Path]) -> None:
    """Replace `<repo>/<name>/<version>/` with `files` (destination name -> source), then config.pbtxt."""
    from google.protobuf import text_format

    if version < 1:
        raise QDeployError(f"model version must be >= 1, got {version}")
    header = [f"Written by qdeploy {__version__} from {header[0]}", *header[1:]]
    text = "".join(f"# {line}\n" for line in header) + text_format.MessageToString(config)
    model_dir = Path(repo) / name
    with staged_directory(model_dir / str(version)) as stage:
        for destination, source in files.items():
            (stage / destination).parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, stage / destination)
            else:
                shutil.copyfile(source, stage / destination)
    write_text(model_dir / CONFIG_FILE, text)


@dataclass(frozen=True)
class RepositoryModel:
    """One servable model found in a repository: its newest version's file and its config."""

    name: str
    version: int
    path: Path
    config: object | None  # ModelConfig, or None when the folder has no config.pbtxt

    @property
    def platform(self) -> str:
        """The config's kind of model: a Triton platform, or PYTHON_BACKEND."""
        if self.config is not None and self.config.backend == PYTHON_BACKEND:
            return PYTHON_BACKEND
        return PLATFORMS[self.path.suffix]


def python_parameters(config: Any, where: str | Path) -> PythonBackendParameters:
    """A Python-backend config's parameters, typed (the one reader the server and model.py share)."""
    return PythonBackendParameters.from_config({k: v.string_value for k, v in config.parameters.items()}, str(where))


def check_config(config, folder_name: str, source: str) -> None:
    """Refuse a ModelConfig this server cannot serve from `folder_name` (config.pbtxt or a JSON override)."""
    if config.name and config.name != folder_name:
        raise QDeployError(f"{source} names the model {config.name!r}, but its folder is {folder_name!r}")
    if config.platform and config.platform not in MODEL_FILES:
        raise QDeployError(f"{source}: platform {config.platform!r} is not served; use one of {sorted(MODEL_FILES)}")
    if config.backend == PYTHON_BACKEND:
        python_parameters(config, source)  # its parameters must read (model_file given, threads a number)


def model_file_names(config) -> list[str]:
    """The file (or folder) names a version folder may hold its model under, by the config."""
    if config is not None and config.backend == PYTHON_BACKEND:
        return [python_parameters(config, CONFIG_FILE).model_file]
    if config is not None and config.default_model_filename:
        return [config.default_model_filename]
    if config is not None and config.platform:
        return [MODEL_FILES[config.platform]]
    return list(MODEL_FILES.values())


def read_model_config(folder: Path):
    """A model folder's checked config.pbtxt, or None when it has none (a bare `<version>/model.onnx`)."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return None
    config = read_config(config_path)
    check_config(config, folder.name, str(config_path))
    return config


def version_numbers(folder: Path) -> list[int]:
    """The version folders of a model folder, newest first."""
    return sorted((int(v.name) for v in folder.iterdir() if v.is_dir() and v.name.isdigit() and int(v.name) > 0),
                  reverse=True)


def version_model_path(folder: Path, version: int, config) -> Path:
    """The model file (or Python-backend model folder) of one version; a one-line error when it has none."""
    candidates = model_file_names(config)
    for candidate in candidates:
        path = folder / str(version) / candidate
        if (path.is_file() and path.suffix in PLATFORMS) or (path.is_dir() and candidate == TORCH_MODEL_FOLDER):
            return path
    raise QDeployError(f"model {folder.name!r} version {version} has no {' or '.join(candidates)}; "
                       "write one with `qdeploy triton-repo`")


def _find_model(folder: Path) -> RepositoryModel:
    config = read_model_config(folder)
    for version in version_numbers(folder):
        with contextlib.suppress(QDeployError):
            return RepositoryModel(folder.name, version, version_model_path(folder, version, config), config)
    raise QDeployError(f"model folder {folder} has no <version>/{' or '.join(model_file_names(config))}; "
                       "write one with `qdeploy triton-repo`")


def model_folders(repo: str | Path) -> list[Path]:
    """The model folders of a repository, checked by name; a one-line error for a missing repository."""
    repo = Path(repo)
    if not repo.is_dir():
        raise QDeployError(f"model repository {repo} is not a folder; write one with `qdeploy triton-repo`")
    folders = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        check_model_name(folder.name)
    return folders


def scan_repository(repo: str | Path) -> list[RepositoryModel]:
    """Every model folder of `repo`, newest version each (Triton's default version policy)."""
    folders = model_folders(repo)
    if not folders:
        raise QDeployError(f"model repository {repo} holds no models; add one with `qdeploy triton-repo`")
    return [_find_model(folder) for folder in folders]
