"""Serving: qdeploy models over the Open Inference Protocol, and Triton model repositories.

`qdeploy serve` and Triton Inference Server read the same repository layout, which
`write_triton_model` (`qdeploy triton-repo`, `qdeploy export --triton-repo`) writes.
"""

from qdeploy.serving.app import create_app
from qdeploy.serving.batcher import DynamicBatcher
from qdeploy.serving.models import ServedModel, ServeOptions, load_models, serve_engines
from qdeploy.serving.protocol import InferRequest, RequestError
from qdeploy.serving.repository import (RepositoryModel, build_config, check_model_name, parse_config, read_config,
                                        scan_repository, write_triton_model)
from qdeploy.serving.server import BackgroundServer, bind_socket, run_server, url_for

__all__ = [
    "BackgroundServer",
    "DynamicBatcher",
    "InferRequest",
    "RepositoryModel",
    "RequestError",
    "ServeOptions",
    "ServedModel",
    "bind_socket",
    "build_config",
    "check_model_name",
    "create_app",
    "load_models",
    "parse_config",
    "read_config",
    "run_server",
    "scan_repository",
    "serve_engines",
    "url_for",
    "write_triton_model",
]
