"""Served models: engines from a repository, their config, their batcher, their metadata.

config.pbtxt is the per-model contract (max_batch_size, dynamic_batching delay, queue
policy, instance count), exactly as Triton reads it; ServeOptions supplies what a model
folder leaves out, so a bare `<model>/1/model.onnx` is servable too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qdeploy.errors import QDeployError
from qdeploy.runtime import Engine, TensorSpec, load_engine
from qdeploy.serving.batcher import DynamicBatcher
from qdeploy.serving.datatypes import protocol_datatype
from qdeploy.serving.protocol import InferRequest
from qdeploy.serving.repository import (MAX_BATCH, MAX_QUEUE_DELAY_US, PYTHON_BACKEND, RepositoryModel, build_config,
                                        check_config_matches, python_parameters, scan_repository)


@dataclass(frozen=True)
class ServeOptions:
    """Server-wide settings; the ones marked 'default' yield to a model's config.pbtxt."""

    backend: str = "auto"
    threads: int = 0  # ONNX Runtime intra-op threads per engine; 0: one per core
    check_finite: bool = False  # refuse NaN/Inf inputs with 400
    instances: int | None = None  # engines per model; None: config's instance_group count, else 1
    max_batch: int = MAX_BATCH  # default max_batch_size for models without config.pbtxt
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US  # default dynamic_batching delay
    max_queue: int = 64  # default waiting requests per model before 503
    timeout_s: float = 30.0  # default longest wait in the queue (504 after it), as Triton's queue policy


def _batchable(specs: Sequence[TensorSpec]) -> bool:
    return all(spec.batched for spec in specs)


def _static_dims(specs: Sequence[TensorSpec]) -> bool:
    return all(isinstance(d, int) for spec in specs for d in spec.shape[1:])


@dataclass
class ServedModel:
    """One model behind the HTTP API: metadata for clients and a batcher for requests."""

    name: str
    version: str
    platform: str
    engine: Engine  # the first instance; validates requests (Engine.feeds is stateless)
    config: Any  # Triton ModelConfig
    batcher: DynamicBatcher
    timeout_s: float

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.engine.outputs]

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata; -1 marks dynamic dims (the batch among them)."""
        def tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": protocol_datatype(s.dtype), "shape": s.to_dict()["shape"]}
                    for s in specs]

        return {"name": self.name, "versions": [self.version], "platform": self.platform,
                "inputs": tensors(self.engine.inputs), "outputs": tensors(self.engine.outputs)}

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Validate against the model (names, dtypes, dims, NaN), then queue for a batch."""
        feeds = self.engine.feeds(request.inputs)
        timeout_s = request.timeout_us / 1e6 if request.timeout_us else self.timeout_s
        return await self.batcher.submit(feeds, timeout_s)


def serve_engines(name: str, version: str, platform: str, engines: Sequence[Engine], config: Any | None,
                  options: ServeOptions) -> ServedModel:
    """Wrap loaded engines of one model; `config` None derives one from the engine's tensors."""
    first = engines[0]
    if config is None:
        batchable = _batchable(first.inputs) and _batchable(first.outputs)
        config = build_config(name, platform, first.inputs, first.outputs,
                              max_batch=options.max_batch if batchable else 0, instances=len(engines),
                              max_queue_delay_us=options.max_queue_delay_us)
    else:
        check_config_matches(config, first.inputs, first.outputs, f"{name}/config.pbtxt")
    policy = config.dynamic_batching.default_queue_policy
    batcher = DynamicBatcher(engines, max_batch=config.max_batch_size,
                             max_delay_s=config.dynamic_batching.max_queue_delay_microseconds / 1e6,
                             max_queue=policy.max_queue_size or options.max_queue)
    timeout_s = policy.default_timeout_microseconds / 1e6 or options.timeout_s
    return ServedModel(name, version, platform, first, config, batcher, timeout_s)


def _engine_settings(entry: RepositoryModel, options: ServeOptions) -> tuple[str, int, dict[str, Any]]:
    """Engine backend, threads and options: the server's options, else a Python-backend config's parameters."""
    if entry.platform != PYTHON_BACKEND:
        return options.backend, options.threads, {}
    params = python_parameters(entry.config, entry.path.parent.parent / "config.pbtxt")
    return (params.engine_backend if options.backend == "auto" else options.backend,
            options.threads or params.threads, params.engine_options())


def load_version(entry: RepositoryModel, options: ServeOptions) -> ServedModel:
    """Load one version's engines and warm them up; any failure (files, config, warm-up) is a one-line error.

    The warm-up runs zeros of the model's full batch through every instance, so a version that
    loads but cannot run is refused before it serves a request. Models with dynamic
    non-batch dims are not warmed up (zeros of a guessed size could be invalid input).
    """
    configured = sum(g.count for g in entry.config.instance_group) if entry.config else 0
    backend, threads, engine_options = _engine_settings(entry, options)
    try:
        engines = [load_engine(entry.path, backend, threads, options.check_finite, **engine_options)
                   for _ in range(options.instances or configured or 1)]
        model = serve_engines(entry.name, str(entry.version), entry.platform, engines, entry.config, options)
    except QDeployError as exc:
        raise QDeployError(f"model {entry.name!r}: {exc}") from exc
    if _static_dims(model.engine.inputs):
        for engine in engines:
            try:
                engine.warmup(batch=max(1, model.batcher.max_batch))
            except Exception as exc:  # any engine error: this version is refused, nothing else
                raise QDeployError(f"model {entry.name!r} version {entry.version} failed its warm-up: "
                                   f"{type(exc).__name__}: {exc}") from exc
    return model


def load_models(repo: str | Path, options: ServeOptions) -> list[ServedModel]:
    """Load and warm up every model of a repository (newest version each); any failure stops with its reason."""
    return [load_version(entry, options) for entry in scan_repository(repo)]
