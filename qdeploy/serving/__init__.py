"""Serving: qdeploy models over the Open Inference Protocol, and Triton model repositories.

`qdeploy serve` (the embedded server, or the real Triton Inference Server that
`install_triton` unpacks and `TritonServer` runs) reads the repository layout that
`write_triton_model` (`qdeploy triton-repo`, `qdeploy export --triton-repo`) writes;
`ModelControl` changes the served versions while the embedded server runs (docs/model-control.md).
"""

from qdeploy.serving.app import create_app
from qdeploy.serving.batcher import DynamicBatcher
from qdeploy.serving.model_control import ControlOptions, ModelControl
from qdeploy.serving.models import ServedModel, ServeOptions, load_models, serve_engines
from qdeploy.serving.protocol import InferRequest, RequestError
from qdeploy.serving.repository import (RepositoryModel, build_config, check_model_name, parse_config, read_config,
                                        scan_repository, write_triton_model)
from qdeploy.serving.server import BackgroundServer, bind_socket, run_server, url_for
from qdeploy.serving.triton_install import TritonInstall, find_triton, install_triton
from qdeploy.serving.triton_server import TritonServer

__all__ = [
    "BackgroundServer",
    "ControlOptions",
    "DynamicBatcher",
    "InferRequest",
    "ModelControl",
    "RepositoryModel",
    "RequestError",
    "ServeOptions",
    "ServedModel",
    "TritonInstall",
    "TritonServer",
    "bind_socket",
    "build_config",
    "check_model_name",
    "create_app",
    "find_triton",
    "install_triton",
    "load_models",
    "parse_config",
    "read_config",
    "run_server",
    "scan_repository",
    "serve_engines",
    "url_for",
    "write_triton_model",
]
