"""`qdeploy serve` (Open Inference Protocol server) and `qdeploy triton-repo` (repository writer).

Both use one repository layout, so a folder written by `triton-repo` serves unchanged from
`qdeploy serve` or from Triton Inference Server.
"""

from __future__ import annotations

from pathlib import Path

import click

from qdeploy.runtime import BACKENDS
from qdeploy.serving.server import LOOPBACK


@click.command("triton-repo")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Model repository folder (created if missing).")
@click.option("--name", required=True, help="Model name: its folder and URL segment.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(0),
              help="max_batch_size; 0 for models without a dynamic batch axis.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1),
              help="Engine instances (instance_group count).")
@click.option("--max-queue-delay-us", default=100, show_default=True, type=click.IntRange(0),
              help="Longest wait for a fuller batch (dynamic_batching).")
@click.option("--version", "version", default=1, show_default=True, type=click.IntRange(1),
              help="Version folder to write.")
@click.option("--plugin-lib", type=click.Path(path_type=Path, dir_okay=False),
              help="TensorRT plugin library the plan needs; config.pbtxt notes how Triton loads it.")
@click.option("--signature-from", type=click.Path(path_type=Path, dir_okay=False),
              help="For a model.plan this machine cannot open: the ONNX file it was built from.")
def triton_repo(model: Path, repo: Path, name: str, max_batch: int, instances: int, max_queue_delay_us: int,
                version: int, plugin_lib: Path | None, signature_from: Path | None) -> None:
    """Write MODEL (.onnx or .plan) into a Triton model repository with its config.pbtxt."""
    from qdeploy.serving.repository import CONFIG_FILE, PLATFORMS, plugin_notes, write_triton_model

    folder = write_triton_model(repo, name, model, max_batch=max_batch, instances=instances,
                                max_queue_delay_us=max_queue_delay_us, plugin_lib=plugin_lib,
                                signature_from=signature_from, version=version)
    click.echo(f"wrote {folder / CONFIG_FILE} and {folder / str(version)}/")
    for line in plugin_notes(PLATFORMS[model.suffix], plugin_lib):  # write_triton_model refused other suffixes
        click.echo(line)


@click.command()
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Model repository (the layout `qdeploy triton-repo` writes).")
@click.option("--host", default=LOOPBACK, show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network (containers).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 picks a free one (printed).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="Intra-op threads per engine (0: one per core).")
@click.option("--instances", type=click.IntRange(1), help="Engines per model [default: config.pbtxt, else 1].")
@click.option("--check-finite", is_flag=True, help="Refuse inputs holding NaN or Inf with 400.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(0),
              help="max_batch_size for models without config.pbtxt.")
@click.option("--max-queue-delay-us", default=100, show_default=True, type=click.IntRange(0),
              help="Batching delay for models without config.pbtxt.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1),
              help="Waiting requests per model before 503 (unless config.pbtxt sets max_queue_size).")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Per-request timeout in seconds, 504 after it (clients may ask for less).")
@click.option("--max-body-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body; bigger ones get 413.")
@click.option("--graceful-timeout", default=30, show_default=True, type=click.IntRange(0),
              help="Seconds in-flight requests get to finish on SIGTERM/SIGINT.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="warning", show_default=True)
def serve(repo: Path, host: str, port: int, backend: str, threads: int, instances: int | None, check_finite: bool,
          max_batch: int, max_queue_delay_us: int, max_queue: int, timeout_s: float, max_body_mb: float,
          graceful_timeout: int, log_level: str) -> None:
    """Serve a model repository over HTTP with the Open Inference Protocol (KServe v2)."""
    from qdeploy.serving import ServeOptions, bind_socket, create_app, load_models, run_server, url_for

    options = ServeOptions(backend=backend, threads=threads, check_finite=check_finite, instances=instances,
                           max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, max_queue=max_queue,
                           timeout_s=timeout_s)
    models = load_models(repo, options)
    app = create_app(models, max_body_bytes=int(max_body_mb * (1 << 20)))
    sock = bind_socket(host, port)
    for model in models:
        click.echo(f"model {model.name} v{model.version}: {model.engine.backend}, max batch "
                   f"{model.batcher.max_batch}, {model.batcher.instances} instance(s)")
    click.echo(f"serving on {url_for(host, sock.getsockname()[1])} (metrics at /metrics; Ctrl-C stops)")
    run_server(app, sock, graceful_timeout, log_level)
