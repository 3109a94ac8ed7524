"""`qdeploy serve` (embedded KServe v2 server or real Triton), `qdeploy triton-repo`, `qdeploy triton install`.

All use one repository layout, so a folder written by `triton-repo` serves unchanged from
the embedded server or from Triton Inference Server.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from qdeploy.errors import QDeployError
from qdeploy.runtime import BACKENDS
from qdeploy.serving.model_control import MODES, ControlOptions
from qdeploy.serving.models import ServeOptions
from qdeploy.serving.server import LOOPBACK


@click.command("triton-repo")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Model repository folder (created if missing).")
@click.option("--name", required=True, help="Model name: its folder and URL segment.")
@click.option("--max-batch", default=ServeOptions.max_batch, show_default=True, type=click.IntRange(0),
              help="max_batch_size; 0 for models without a dynamic batch axis.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1),
              help="Engine instances (instance_group count).")
@click.option("--max-queue-delay-us", default=ServeOptions.max_queue_delay_us, show_default=True,
              type=click.IntRange(0),
              help="Longest wait for a fuller batch (dynamic_batching).")
@click.option("--version", "version", default=1, show_default=True, type=click.IntRange(1),
              help="Version folder to write.")
@click.option("--plugin-lib", type=click.Path(path_type=Path, dir_okay=False),
              help="TensorRT plugin library the plan needs; config.pbtxt notes how Triton loads it.")
@click.option("--signature-from", type=click.Path(path_type=Path, dir_okay=False),
              help="For a model.plan this machine cannot open: the ONNX file it was built from.")
@click.option("--backend", "triton_backend", type=click.Choice(["platform", "python"]), default="platform",
              show_default=True, help="platform: Triton's onnxruntime_onnx / tensorrt_plan; python: Triton's "
              "Python backend running qdeploy's engine (also model folders, on PyTorch).")
@click.option("--engine-backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="With --backend python: the qdeploy engine model.py runs.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="With --backend python: intra-op threads per instance (0: one per core).")
def triton_repo(model: Path, repo: Path, name: str, max_batch: int, instances: int, max_queue_delay_us: int,
                version: int, plugin_lib: Path | None, signature_from: Path | None, triton_backend: str,
                engine_backend: str, threads: int) -> None:
    """Write MODEL (.onnx, .plan, or a model folder for --backend python) into a Triton model repository."""
    from qdeploy.serving.repository import CONFIG_FILE, PLATFORMS, plugin_notes, write_triton_model

    if triton_backend == "platform" and (engine_backend != "auto" or threads):
        raise QDeployError("--engine-backend and --threads are for --backend python; Triton's own backends "
                           "take their settings from config.pbtxt")
    folder = write_triton_model(repo, name, model, max_batch=max_batch, instances=instances,
                                max_queue_delay_us=max_queue_delay_us, plugin_lib=plugin_lib,
                                signature_from=signature_from, version=version, backend=triton_backend,
                                engine_backend=engine_backend, threads=threads)
    click.echo(f"wrote {folder / CONFIG_FILE} and {folder / str(version)}/")
    if triton_backend == "platform":
        for line in plugin_notes(PLATFORMS[model.suffix], plugin_lib):  # write_triton_model refused other suffixes
            click.echo(line)


@click.group("triton")
def triton() -> None:
    """NVIDIA's Triton Inference Server, from PyPI's nvidia-pytriton wheel, kept apart from this environment."""


@triton.command("install")
@click.argument("home", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--wheel", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="A downloaded nvidia_pytriton-0.7.0 wheel (offline); default: pip download it.")
def triton_install(home: Path | None, wheel: Path | None) -> None:
    """Unpack tritonserver into HOME [default: $QDEPLOY_TRITON_HOME or ~/.cache/qdeploy/triton]."""
    from qdeploy.serving.triton_install import install_triton

    install = install_triton(home, wheel)
    click.echo(f"tritonserver: {install.server}")
    click.echo(f"Python backend (this Python): {install.backends / 'python'}")
    click.echo("serve with: qdeploy serve --server triton --repo DIR")


# Options only the embedded server reads; Triton takes these settings from config.pbtxt.
_EMBEDDED_ONLY = ("backend", "threads", "instances", "check_finite", "max_batch", "max_queue_delay_us", "max_queue",
                  "timeout_s", "max_body_mb", "log_level")


@click.command()
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Model repository (the layout `qdeploy triton-repo` writes).")
@click.option("--server", "server_kind", type=click.Choice(["embedded", "triton"]), default="embedded",
              show_default=True, help="embedded: qdeploy's KServe v2 server; triton: the real tritonserver "
              "(`qdeploy triton install`).")
@click.option("--host", default=LOOPBACK, show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network (containers).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="HTTP port; 0 picks a free one (printed).")
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535),
              help="Triton only: gRPC port; 0 picks a free one.")
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(0, 65535),
              help="Triton only: Prometheus metrics port (the embedded server has /metrics on --port).")
@click.option("--backend", type=click.Choice(BACKENDS), default=ServeOptions.backend, show_default=True)
@click.option("--threads", default=ServeOptions.threads, show_default=True, type=click.IntRange(0),
              help="Intra-op threads per engine (0: one per core).")
@click.option("--instances", type=click.IntRange(1), default=ServeOptions.instances,
              help="Engines per model [default: config.pbtxt, else 1].")
@click.option("--check-finite", is_flag=True, default=ServeOptions.check_finite,
              help="Refuse inputs holding NaN or Inf with 400.")
@click.option("--max-batch", default=ServeOptions.max_batch, show_default=True, type=click.IntRange(0),
              help="max_batch_size for models without config.pbtxt.")
@click.option("--max-queue-delay-us", default=ServeOptions.max_queue_delay_us, show_default=True,
              type=click.IntRange(0),
              help="Batching delay for models without config.pbtxt.")
@click.option("--max-queue", default=ServeOptions.max_queue, show_default=True, type=click.IntRange(1),
              help="Waiting requests per model before 503 (unless config.pbtxt sets max_queue_size).")
@click.option("--timeout", "timeout_s", default=ServeOptions.timeout_s, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Longest wait in the queue in seconds, 504 after it (clients may ask for less).")
@click.option("--max-body-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body; bigger ones get 413.")
@click.option("--graceful-timeout", default=30, show_default=True, type=click.IntRange(0),
              help="Seconds in-flight requests get to finish on SIGTERM/SIGINT.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="warning", show_default=True)
@click.option("--model-control-mode", type=click.Choice(MODES), default="none", show_default=True,
              help="none: load every model at start, never change; poll: follow the repository (new, changed and "
              "removed versions); explicit: --load-model at start, then POST /v2/repository/models/NAME/load|unload.")
@click.option("--repository-poll-secs", default=ControlOptions.poll_secs, show_default=True, type=click.IntRange(1),
              help="With poll: seconds between repository polls.")
@click.option("--load-model", "load_model", multiple=True,
              help="With explicit: a model to load at start (repeatable; '*' loads all).")
@click.option("--exit-on-error", is_flag=True,
              help="Stop the start when a model fails to load (default: serve the others, the index says why).")
@click.pass_context
def serve(ctx: click.Context, repo: Path, server_kind: str, host: str, port: int, grpc_port: int, metrics_port: int,
          backend: str, threads: int, instances: int | None, check_finite: bool, max_batch: int,
          max_queue_delay_us: int, max_queue: int, timeout_s: float, max_body_mb: float, graceful_timeout: int,
          log_level: str, model_control_mode: str, repository_poll_secs: int, load_model: tuple[str, ...],
          exit_on_error: bool) -> None:
    """Serve a model repository with the Open Inference Protocol (KServe v2): embedded, or real Triton."""
    control = ControlOptions(mode=model_control_mode, poll_secs=repository_poll_secs, load_models=load_model,
                             exit_on_error=exit_on_error)
    if server_kind == "triton":
        given = [name for name in _EMBEDDED_ONLY
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise QDeployError(f"--{given[0].replace('_', '-').removesuffix('-s')} is an embedded-server option; "
                               "Triton reads these settings from config.pbtxt (`qdeploy triton-repo` writes them)")
        _serve_triton(repo, host, port, grpc_port, metrics_port, graceful_timeout, control)
        return
    from qdeploy.serving import bind_socket, create_app, run_server, url_for
    from qdeploy.serving.model_control import ModelControl

    options = ServeOptions(backend=backend, threads=threads, check_finite=check_finite, instances=instances,
                           max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, max_queue=max_queue,
                           timeout_s=timeout_s)
    _log_model_changes(log_level)
    models = ModelControl(repo, options, control)
    failures = models.load_at_start()
    app = create_app(models, max_body_bytes=int(max_body_mb * (1 << 20)))
    sock = bind_socket(host, port)
    for state in models.models.values():
        for model in state.ready.values():
            click.echo(f"model {model.name} v{model.version}: {model.engine.backend}, max batch "
                       f"{model.batcher.max_batch}, {model.batcher.instances} instance(s)")
    for failure in failures:
        click.echo(f"not served: {failure}", err=True)
    click.echo(f"serving on {url_for(host, sock.getsockname()[1])} (metrics at /metrics; Ctrl-C stops)")
    run_server(app, sock, graceful_timeout, log_level)


def _log_model_changes(log_level: str) -> None:
    """Model loads, swaps and refusals go to stderr (INFO unless --log-level asks for less)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("qdeploy.serving")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if log_level in ("info", "debug", "warning") else getattr(logging, log_level.upper()))


def _serve_triton(repo: Path, host: str, port: int, grpc_port: int, metrics_port: int, graceful_timeout: int,
                  control: ControlOptions) -> None:
    """tritonserver in the foreground, its log on this terminal; SIGTERM/SIGINT stop it gracefully."""
    from qdeploy.serving.triton_server import TritonServer, run_triton

    server = TritonServer(repo, host=host, http_port=port, grpc_port=grpc_port, metrics_port=metrics_port,
                          exit_timeout_s=graceful_timeout, log=sys.stdout, control=control)

    def announce() -> None:
        click.echo(f"serving on {server.url} (tritonserver; gRPC "
                   f"{server.grpc_address}; metrics at {server.metrics_url}; Ctrl-C stops)")

    code = run_triton(server, announce)
    if code not in (0, -15):
        raise SystemExit(code)
