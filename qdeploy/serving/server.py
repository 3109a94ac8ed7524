"""Run the app with uvicorn: in the foreground (`qdeploy serve`) or in a background thread.

The listening socket is bound here, before uvicorn starts, so port 0 yields a free port that
is known (and printed) at once, and a taken port fails with a one-line error. uvicorn's
graceful shutdown (SIGINT/SIGTERM, or `should_exit`) stops accepting, lets in-flight
requests finish within `graceful_timeout_s`, then runs the app's lifespan shutdown, which
drains the batch queues. The app hears of the shutdown first (`InferenceAPI.begin_drain`), so
readiness and late requests answer 503 from then on.

Idle keep-alive connections stay open for KEEP_ALIVE_S. uvicorn's default (5 s) closed them
while clients that pause between requests were about to reuse them: a request sent as the
server's FIN crossed it failed with "connection closed" (tritonclient does not retry). Triton
itself keeps idle connections open, so a pause of any length is normal client behaviour.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette

from qdeploy.errors import QDeployError

LOOPBACK = "127.0.0.1"
KEEP_ALIVE_S = 600  # longer than any pause between a client's requests, short enough to shed dead peers


class _DrainingServer(uvicorn.Server):
    """uvicorn's server that tells the app a graceful shutdown has begun, before it waits for requests."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        api = getattr(self._app.state, "api", None)
        if api is not None:
            api.begin_drain()
        await super().shutdown(sockets)


def bind_socket(host: str = LOOPBACK, port: int = 0) -> socket.socket:
    """A listening TCP socket for `host:port` (IPv4 or IPv6); port 0 picks a free one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # clients that connect before uvicorn accepts wait instead of being refused
    except OSError as exc:
        raise QDeployError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url_for(host: str, port: int) -> str:
    """The base URL of a server on `host:port` (IPv6 literals in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn(app: Starlette, graceful_timeout_s: int, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(app, lifespan="on", log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=graceful_timeout_s, timeout_keep_alive=KEEP_ALIVE_S)
    return _DrainingServer(config, app)


def run_server(app: Starlette, sock: socket.socket, graceful_timeout_s: int = 30, log_level: str = "warning") -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (blocks).

    uvicorn re-raises the signal once it has shut down, so SIGTERM ends the process with the
    conventional status 143; Ctrl-C's KeyboardInterrupt is an ordinary exit, not an error.
    """
    with contextlib.suppress(KeyboardInterrupt):
        _uvicorn(app, graceful_timeout_s, log_level).run(sockets=[sock])


class BackgroundServer:
    """Serve an app from a thread on a loopback port: `with BackgroundServer(app) as server: server.url`.

    For tests, notebooks and benchmarks that drive the server from the same process.
    """

    def __init__(self, app: Starlette, host: str = LOOPBACK, port: int = 0, graceful_timeout_s: int = 10,
                 log_level: str = "warning", start_timeout_s: float = 60.0) -> None:
        self.app = app
        self._sock = bind_socket(host, port)
        self.port = self._sock.getsockname()[1]
        self.url = url_for(host, self.port)
        self._server = _uvicorn(app, graceful_timeout_s, log_level)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="qdeploy-server", daemon=True)
        self._start_timeout_s = start_timeout_s

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise QDeployError(f"the server on {self.url} did not start; see its log above")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Graceful shutdown: in-flight requests finish, then the thread ends."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._sock.close()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
