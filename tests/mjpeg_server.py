"""A local HTTP MJPEG server for tests: multipart/x-mixed-replace JPEG frames of the synthetic scene.

    server = MJPEGServer(fps=30)
    server.start()            # binds 127.0.0.1, a free port the first time
    url = server.url          # http://127.0.0.1:<port>/stream.mjpg
    server.stop()             # closes the listener and every open stream
    server.paused.set()       # streams stay open but stall (no frames) until cleared
    server.start()            # again on the same port

Bounded: each connection serves at most ``max_frames`` frames, and the server stops by itself
``lifetime_s`` seconds after the last start.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from forecaster.sources.synthetic import SyntheticScene

BOUNDARY = "frameboundary"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MJPEGServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read their own output."""

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._register(self.connection)
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            stop = owner._stop_event
            index = 0
            while index < owner.max_frames and not stop.is_set():
                if owner.paused.is_set():  # keep the connection open, send nothing
                    stop.wait(owner.interval)
                    continue
                jpeg = owner.jpeg(index)
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode("ascii") + jpeg + b"\r\n"
                )
                self.wfile.flush()
                owner._count_frame()
                index += 1
                if stop.wait(owner.interval):
                    break
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client left, or stop() closed the connection
        finally:
            owner._unregister(self.connection)
            self.close_connection = True


class MJPEGServer:
    """Serves the synthetic scene as an MJPEG stream on 127.0.0.1."""

    def __init__(self, *, fps: float = 30.0, width: int = 160, height: int = 120, seed: int = 0,
                 max_frames: int = 3000, lifetime_s: float = 60.0) -> None:
        self.interval = 1.0 / fps
        self.max_frames = max_frames
        self.lifetime_s = lifetime_s
        self.port = 0
        self.frames_sent = 0
        self._scene = SyntheticScene(seed=seed, width=width, height=height, anomaly_rate=0.0)
        self._jpegs: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stop_event = threading.Event()
        #: while set, open streams stay connected but receive no frames (a stalled camera)
        self.paused = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    @property
    def running(self) -> bool:
        return self._server is not None

    def jpeg(self, index: int) -> bytes:
        """JPEG bytes of scene frame ``index`` (BGR, so clients see a colour stream)."""
        with self._lock:
            cached = self._jpegs.get(index % 250)
        if cached is None:
            frame = cv2.cvtColor(self._scene.frame(index % 250), cv2.COLOR_GRAY2BGR)
            ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok, "cv2.imencode failed"
            cached = np.asarray(buffer).tobytes()
            with self._lock:
                self._jpegs[index % 250] = cached
        return cached

    def start(self) -> MJPEGServer:
        """Listen (on the previous port if there was one) and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError(f"MJPEG server already running on port {self.port}")
        self._stop_event = threading.Event()
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mjpeg-server:{self.port}", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open stream; returns when the serving thread ended."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop_event.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MJPEGServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _register(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _count_frame(self) -> None:
        with self._lock:
            self.frames_sent += 1
