"""``forecaster watch``: subscribe to scores, events and status and show them live.

On a terminal, one line per camera is refreshed in place; otherwise (a pipe, a file)
every message is written as one plain line. Until the first message arrives it says that
it is waiting for the endpoint (on stderr). A camera from which nothing came for three of
its status intervals is marked STALE (a plain line says so once). Imports neither
TensorFlow nor OpenCV.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from forecaster.client import Subscriber
from forecaster.errors import UsageError
from forecaster.protocol import Event, Message, ProtocolError, Score, Status

log = logging.getLogger("forecaster.watch")

WATCH_KINDS = ("score", "event", "status")
BAR_WIDTH = 10
BAR_FULL_SCORE = 6.0  # score at which the bar is full
REDRAW_INTERVAL_S = 0.1
#: the daemon's default publish.status_interval_s, until two status messages tell
DEFAULT_STATUS_INTERVAL_S = 5.0
#: status intervals without any message after which a camera is stale
STALE_INTERVALS = 3

_UP = "\x1b[{n}A"
_CLEAR_LINE = "\x1b[2K"


@dataclass
class _CameraView:
    """What the live display knows about one camera."""

    seq: int = -1
    fps: float = math.nan
    score: float = math.nan
    psnr: float = math.nan
    anomaly: bool = False
    connected: bool = True
    ended: bool = False
    stale: bool = False
    #: monotonic time of the camera's last message
    last_seen: float = math.nan
    #: the sender's time stamp of the camera's last status message
    last_status_ts: float = math.nan
    status_interval: float = DEFAULT_STATUS_INTERVAL_S

    def seen(self, msg: Message, now: float) -> None:
        self.last_seen, self.stale = now, False
        if isinstance(msg, Status):
            self.ended = msg.ended
            # the interval by the sender's clock: messages that arrive in a burst (a slow
            # network, a busy reader) would make the interval look far shorter
            if not math.isnan(self.last_status_ts) and msg.ts > self.last_status_ts:
                self.status_interval = msg.ts - self.last_status_ts
            self.last_status_ts = msg.ts

    def goes_stale(self, now: float) -> bool:
        """True once, when nothing came for STALE_INTERVALS status intervals."""
        if self.stale or self.ended or math.isnan(self.last_seen):
            return False
        self.stale = now - self.last_seen > STALE_INTERVALS * self.status_interval
        return self.stale


def _num(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def score_bar(score: float, width: int = BAR_WIDTH, full: float = BAR_FULL_SCORE) -> str:
    """An ASCII bar of ``width`` characters, full at ``score >= full``, empty at <= 0 or NaN."""
    filled = 0 if math.isnan(score) else round(min(max(score / full, 0.0), 1.0) * width)
    return "#" * filled + "." * (width - filled)


def format_message(msg: Message) -> str:
    """One plain line describing ``msg``."""
    head = f"{msg.kind:<6} {msg.camera} seq={msg.seq}"
    if isinstance(msg, Score):
        return (
            f"{head} score={_num(msg.score, '.2f')} psnr={_num(msg.psnr, '.2f')}"
            f" mse={_num(msg.mse, '.6f')} anomaly={'yes' if msg.anomaly else 'no'}"
            f" latency_ms={_num(msg.latency_ms, '.1f')}"
        )
    if isinstance(msg, Event):
        return f"{head} state={msg.state} peak_score={_num(msg.peak_score, '.2f')}"
    if isinstance(msg, Status):
        line = (
            f"{head} fps={_num(msg.fps, '.1f')} captured={msg.frames_captured}"
            f" dropped={msg.frames_dropped} resets={msg.state_resets}"
            f" connected={'yes' if msg.connected else 'no'} ended={'yes' if msg.ended else 'no'}"
        )
        return f"{line} reason={msg.reason}" if msg.reason else line
    return head


def _camera_line(camera: str, view: _CameraView) -> str:
    state = ("ENDED" if view.ended else "STALE" if view.stale
             else "DISCONNECTED" if not view.connected else "")
    seq = str(view.seq) if view.seq >= 0 else "-"
    return (
        f"{camera:<10} seq {seq:>7}  {_num(view.fps, '5.1f'):>5} fps"
        f"  score {_num(view.score, '6.2f'):>6}  {_num(view.psnr, '5.1f'):>5} dB"
        f" {'ANOMALY' if view.anomaly else '':<7} [{score_bar(view.score)}] {state}"
    ).rstrip()


class _LiveDisplay:
    """Keeps one line per camera on a terminal, rewritten in place."""

    def __init__(self, out: TextIO, columns: int | None = None) -> None:
        self.out = out
        self.columns = columns
        self.views: dict[str, _CameraView] = {}
        self.lines_drawn = 0
        self.last_draw = -math.inf

    def update(self, msg: Message) -> None:
        view = self.views.setdefault(msg.camera, _CameraView())
        if isinstance(msg, Score):
            view.seq = msg.seq
            view.score, view.psnr, view.anomaly = msg.score, msg.psnr, msg.anomaly
        elif isinstance(msg, Event):
            view.anomaly = msg.state == "start"
        elif isinstance(msg, Status):
            if math.isnan(view.score):  # before the first score, show the capture progress
                view.seq = msg.seq
            view.fps, view.connected, view.ended = msg.fps, msg.connected, msg.ended
        now = time.monotonic()
        forced = isinstance(msg, Event) or (isinstance(msg, Status) and msg.ended)
        if forced or now - self.last_draw >= REDRAW_INTERVAL_S:
            self.draw(now)

    def draw(self, now: float | None = None) -> None:
        parts = []
        if self.lines_drawn:
            parts.append(_UP.format(n=self.lines_drawn))
        for camera, view in self.views.items():
            line = _camera_line(camera, view)
            if self.columns is not None:
                line = line[: max(self.columns - 1, 20)]  # a wrapped line would break the redraw
            parts.append(f"\r{_CLEAR_LINE}{line}\n")
        self.out.write("".join(parts))
        self.out.flush()
        self.lines_drawn = len(self.views)
        self.last_draw = time.monotonic() if now is None else now


def _is_tty(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):
        return False


def watch(
    endpoint: str,
    camera: str | None = None,
    *,
    once: bool = False,
    max_messages: int | None = None,
    seconds: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Show scores, events and status published on ``endpoint``; return the exit code 0.

    ``camera`` limits the display to one camera. ``once`` stops after the first message,
    ``max_messages`` after that many, ``seconds`` after that long. ``out`` defaults to
    ``sys.stdout``. Ctrl-C stops.
    """
    if seconds is not None and not seconds > 0:
        raise UsageError(f"--seconds must be above 0, got {seconds}")
    if max_messages is not None and max_messages < 1:
        raise UsageError(f"max_messages must be >= 1, got {max_messages}")
    if once:
        max_messages = 1
    stream = sys.stdout if out is None else out
    try:
        sub = Subscriber(
            endpoint,
            cameras=[camera] if camera is not None else None,
            kinds=WATCH_KINDS,
            skip_invalid=True,
        )
    except ProtocolError as exc:
        raise UsageError(f"invalid --camera {camera!r}: {exc}") from exc
    columns = shutil.get_terminal_size().columns if stream is sys.stdout else None
    live = _LiveDisplay(stream, columns) if _is_tty(stream) else None
    shown = 0
    views = live.views if live is not None else {}
    deadline = math.inf if seconds is None else time.monotonic() + seconds
    print(f"waiting for {endpoint} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while (max_messages is None or shown < max_messages) and time.monotonic() < deadline:
            msg = sub.recv(timeout=min(0.5, max(deadline - time.monotonic(), 0.0)))
            now = time.monotonic()
            if msg is not None:
                shown += 1
                views.setdefault(msg.camera, _CameraView()).seen(msg, now)
                if live is not None:
                    live.update(msg)
                else:
                    stream.write(format_message(msg) + "\n")
                    stream.flush()
            stale = [c for c, view in views.items() if view.goes_stale(now)]
            if stale and live is not None:
                live.draw(now)
            for name in stale if live is None else ():
                view = views[name]
                stream.write(f"stale  {name}: no message for {now - view.last_seen:.1f} s "
                             f"({STALE_INTERVALS} status intervals)\n")
                stream.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        if sub.invalid:
            log.warning("skipped %d malformed messages from %s", sub.invalid, endpoint)
    if live is not None and live.views:
        with contextlib.suppress(KeyboardInterrupt):
            live.draw()
    return 0
