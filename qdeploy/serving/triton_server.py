"""Run the real `tritonserver` on a model repository: start, wait for readiness, stop gracefully.

`qdeploy serve --server triton` runs it in the foreground (SIGTERM and SIGINT are forwarded,
so Triton finishes in-flight requests within its exit timeout); tests and benchmarks use
`TritonServer` as a context manager on free loopback ports. The server comes from
`qdeploy triton install` (see triton_install); its Python-backend models run qdeploy engines
in this interpreter's environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Callable

from qdeploy.errors import QDeployError
from qdeploy.serving.model_control import ControlOptions
from qdeploy.serving.server import LOOPBACK, bind_socket, url_for
from qdeploy.serving.triton_install import TritonInstall, find_triton, stub_environment


_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (tritonserver cannot take port 0)."""
    with contextlib.closing(bind_socket(host, 0)) as sock:
        return sock.getsockname()[1]


class TritonServer:
    """`tritonserver` on `repo`: HTTP, gRPC and metrics ports (0: a free one each), loopback by default.

    With `log` None the server's output goes to a temporary file whose last lines explain a
    failed start; pass sys.stdout (the CLI) to show it as it comes. `control` passes Triton's
    own model-control flags; its exit_on_error (default here: on) also sets strict readiness.
    """

    def __init__(self, repo: str | Path, *, install: TritonInstall | None = None, host: str = LOOPBACK,
                 http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0, exit_timeout_s: int = 30,
                 control: ControlOptions = ControlOptions(exit_on_error=True), start_timeout_s: float = 180.0,
                 log: IO[str] | None = None) -> None:
        repo = Path(repo)
        if not repo.is_dir():
            raise QDeployError(f"model repository {repo} is not a folder; write one with `qdeploy triton-repo`")
        self.install = install or find_triton()
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.exit_timeout_s = exit_timeout_s
        self.start_timeout_s = start_timeout_s
        self.command = [
            str(self.install.server), f"--model-repository={repo.resolve()}",
            f"--backend-directory={self.install.backends}",
            f"--http-address={host}", f"--http-port={self.http_port}",
            f"--grpc-address={host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={host}", f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={exit_timeout_s}",
            # exit_on_error: a model that fails to load stops the start; otherwise Triton serves
            # the others and reports the failure in its repository index.
            f"--exit-on-error={str(control.exit_on_error).lower()}",
            f"--strict-readiness={str(control.exit_on_error).lower()}",
            f"--model-control-mode={control.mode}",
            *([f"--repository-poll-secs={control.poll_secs}"] if control.mode == "poll" else []),
            *(f"--load-model={name}" for name in control.load_models),
        ]
        self._log = log
        self._log_file: IO[str] | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return url_for(self.host, self.http_port)

    @property
    def http_address(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def grpc_address(self) -> str:
        return url_for(self.host, self.grpc_port).removeprefix("http://")

    @property
    def metrics_url(self) -> str:
        return url_for(self.host, self.metrics_port) + "/metrics"

    def log_errors(self) -> str:
        """Triton's last error message (its last line when it logged no error); "see its log above" when shown."""
        if self._log_file is None:
            return "see its log above"
        self._log_file.flush()
        text = [line.strip() for line in Path(self._log_file.name).read_text(errors="replace").splitlines()
                if line.strip()]
        errors = [line for line in text if _ERROR_LINE.match(line)]
        if not errors:
            return text[-1] if text else "it printed nothing"
        message = _ERROR_LINE.sub("", errors[-1]).strip('"')
        return message.split("\\n")[0]  # Triton escapes a Python traceback's newlines

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def start(self) -> TritonServer:
        """Start and wait until Triton is ready; a one-line error (with its last log lines) otherwise."""
        if self._log is None:
            self._log_file = tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log", delete=False)
        out = self._log or self._log_file
        try:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                            env=stub_environment(self.install), start_new_session=True)
        except OSError as exc:
            raise QDeployError(f"cannot start {self.install.server}: {exc.strerror or exc}; "
                               "run `qdeploy triton install` again") from exc
        deadline = time.monotonic() + self.start_timeout_s
        while not self._ready():
            if self.process.poll() is not None:
                reason = f"tritonserver exited with status {self.process.returncode} before it was ready"
            elif time.monotonic() > deadline:
                reason = f"tritonserver was not ready within {self.start_timeout_s:g} s"
            else:
                time.sleep(0.2)
                continue
            errors = self.log_errors()
            self.stop()
            raise QDeployError(f"{reason}: {errors}")
        return self

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM): Triton finishes in-flight requests, then exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Wait for the server to exit; returns its exit status."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        """Graceful stop, killed if it outlasts the exit timeout; removes the temporary log."""
        if self.process is not None:
            self.terminate()
            try:
                self.process.wait(self.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._log_file.name)
            self._log_file = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_triton(server: TritonServer, announce: Callable[[], None]) -> int:
    """Serve in the foreground until SIGTERM/SIGINT, forwarded to Triton; returns its exit status.

    Triton runs in its own session, so a terminal's Ctrl-C reaches it once, through here.
    """
    server.start()
    announce()

    def forward(signum: int, frame: object) -> None:
        server.terminate()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()

