"""An RTSP server for benchmarks and tests: GStreamer's, serving an H.264 video file.

It runs in the system's Python (``/usr/bin/python3``), where GStreamer's introspection
bindings live (Debian: ``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``, and the demuxers and
parsers of ``gstreamer1.0-plugins-good`` and ``-bad``). The file's H.264 is served as it is,
not decoded nor encoded again, at the file's own rate, as an IP camera serves its stream.
Each client gets a stream of its own from the file's start: the file ``repeats`` times
over (the time runs on from one pass to the next, as a camera's does); then the stream
ends. Not one stream that the clients share, as the viewers of an IP camera do: a camera
sends a keyframe every second or two, but a file may have few (``vtest.avi`` has 3 in its
341 frames, one every 128), and a client that joins a shared stream after them
waits for the next pass, timing out and reconnecting meanwhile. The server answers each
client in a thread of its own.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
from pathlib import Path

from forecaster.errors import ChildFailed

#: the interpreter that has GStreamer's bindings
SYSTEM_PYTHON = "/usr/bin/python3"

_SERVER = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
path, port, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name in ("parsebin", "rtph264pay", "filesrc", "concat"):
    if Gst.ElementFactory.find(name) is None:
        print(f"missing GStreamer element {name}", flush=True)
        sys.exit(3)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
location = path.replace("\\", "\\\\").replace('"', '\\"')
# the file again and again, one stream: concat carries the time on from one to the next
files = " ".join(f'filesrc location="{location}" ! parsebin ! c. ' for _ in range(repeats))
factory.set_launch(f'( concat name=c ! rtph264pay name=pay0 pt=96 config-interval=1 {files})')
factory.set_shared(False)  # a stream a client, each from a keyframe (see the docstring)
server.get_thread_pool().set_max_threads(64)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    print("cannot listen", flush=True)
    sys.exit(4)
print("ready", flush=True)
GLib.MainLoop().run()
"""

_CHECK = ('import gi; gi.require_version("Gst", "1.0"); '
          'gi.require_version("GstRtspServer", "1.0"); '
          'from gi.repository import Gst, GstRtspServer; Gst.init(None); '
          'import sys; sys.exit(0 if all(Gst.ElementFactory.find(n) for n in '
          '("parsebin", "rtph264pay", "avidemux", "h264parse", "concat")) else 3)')


def rtsp_server_missing() -> str | None:
    """Why the RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).is_file() or shutil.which(SYSTEM_PYTHON) is None:
        return f"{SYSTEM_PYTHON} not found"
    proc = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, timeout=60)
    if proc.returncode != 0:
        return ("GStreamer's RTSP server is not installed for the system Python (Debian: "
                "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good "
                "gstreamer1.0-plugins-bad)")
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RtspServer:
    """Serves ``video`` (H.264 in any container GStreamer reads) at :attr:`url` until closed,
    ``repeats`` times over, a stream for each client."""

    def __init__(self, video: Path, *, repeats: int = 40, start_timeout_s: float = 30.0) -> None:
        missing = rtsp_server_missing()
        if missing is not None:
            raise ChildFailed(f"cannot start the RTSP server: {missing}")
        self.port = _free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        env = {key: value for key, value in os.environ.items()
               if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", _SERVER, str(Path(video).resolve()), str(self.port),
             str(repeats)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout_s)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != "ready":
            self.close()
            raise ChildFailed(f"the RTSP server did not start: {line or 'no answer'}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> RtspServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SYSTEM_PYTHON", "RtspServer", "rtsp_server_missing"]
