"""Prometheus scrapes over HTTP, for the daemon's and the relay's metrics.

A registry served in a thread, without an access log. On a loopback address it answers
only requests whose ``Host`` header names a loopback address, as the live page does, so a
web site cannot read the metrics through DNS rebinding.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from forecaster.endpoints import host_header_is_loopback, is_loopback_host
from forecaster.errors import ConfigError


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: one line per scrape would flood the journal."""


def loopback_hosts_only(app: Any) -> Any:
    """``app`` behind the loopback ``Host`` rule (as the live page's): a web site cannot
    read the metrics through DNS rebinding."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        host = environ.get("HTTP_HOST")
        if not host_header_is_loopback(host):
            what = "no Host header" if host is None else f"Host {host!r} is not a loopback address"
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"403: {what} (scrape http://127.0.0.1:PORT/metrics)\n".encode()]
        return app(environ, start_response)

    return guarded


class MetricsHTTP:
    """``registry`` served on ``address:port`` in a thread; ``keys`` names the config keys
    of the address and port in the error of a port that cannot be bound."""

    def __init__(self, address: str, port: int, registry: Any, keys: str) -> None:
        from prometheus_client import make_wsgi_app

        family = socket.AF_INET6 if ":" in address else socket.AF_INET

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = family

        app = make_wsgi_app(registry)
        if is_loopback_host(address):
            app = loopback_hosts_only(app)
        try:
            self._server = make_server(address, port, app, Server, handler_class=_QuietHandler)
        except OSError as error:
            raise ConfigError(f"cannot serve metrics on {address} port {port} ({keys}): "
                              f"{error.strerror or error}") from None
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="metrics-http", daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        with contextlib.suppress(OSError):
            self._server.server_close()
        self._thread.join(timeout=2)


__all__ = ["MetricsHTTP", "loopback_hosts_only"]
