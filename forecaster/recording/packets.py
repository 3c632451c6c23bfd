"""Clips copied from the camera's own H.264, not encoded again.

A camera or file whose video is H.264, decoded by PyAV, is recorded by copying its compressed
packets into the clip (``[recording] copy_video = true``, the default). The capture process then
keeps no JPEG pre-roll and encodes nothing, and decodes the frames to their luma plane only,
as without recording: a clip costs it almost no CPU. The clip has the camera's own size and
quality (so ``max_width`` and ``preset`` do not apply to it), and it begins at the keyframe at
or before the start of the pre-roll, which the camera's keyframe interval may make a few
seconds longer than ``pre_s``.

- :class:`PacketTap`, told by the decoder (:class:`forecaster.sources.luma.PacketTap`) of
  each packet it demuxes and each frame it decodes: the recent packets in decoding order,
  each with the index of its frame in showing order once the decoder has given it out, kept
  from the last keyframe old enough for the pre-roll (and at most ``preroll_max_mb``);
- :class:`CopyRecorder`, driven by the event board as :class:`~forecaster.recording.recorder.
  Recorder` is: hands an event's packets to the clip writer thread as they are decoded;
- :class:`~forecaster.recording.remux.CopyWriter`, the writer thread's MP4 muxer: timestamps
  of its own (frame ``n`` of the clip is shown at ``n / fps``), so a clip that spans a file's
  loop or a reconnect (the same stream parameters) plays straight through;
- the snapshot: the peak frame, made into a JPEG when the worker names it while it is among
  the last :data:`RECENT_FRAMES` decoded, else decoded from the finished clip
  (:func:`~forecaster.recording.remux.copied_snapshot`: from the keyframe before it).

A stream whose parameters change (a reconnect to another resolution) ends the clip, as does a
source no longer copied (its clip is finished with what it has); a stream that is not H.264,
or that OpenCV decodes, is recorded by encoding its frames
(:class:`~forecaster.recording.recorder.Recorder`). A packet whose frame never comes (the
decoder refused it) is given up on :data:`REORDER_LIMIT` packets later and left out of the
clip; the frames after it, to the next keyframe, play as a decoder conceals such a loss.
"""

from __future__ import annotations

import collections
import io
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import cv2

from forecaster.config import RecordingConfig
from forecaster.recording.clip_writer import Clip, ClipWriter, Entry
from forecaster.recording.event_board import event_stem
from forecaster.sources.luma import colour

log = logging.getLogger("forecaster.recording")

#: decoded frames a camera keeps for a snapshot (a 720p frame is 1.4 MB): the worker names an
#: event's peak frame a few frames after it was decoded; an older one is decoded again from
#: the finished clip
RECENT_FRAMES = 6
#: codecs copied into an MP4 clip that a browser plays
COPIED_CODECS = frozenset({"h264"})
#: a packet whose frame the decoder has not given out yet
PENDING = -1
#: a packet whose frame never came (its stream ended before the decoder gave it out, or the
#: decoder could not decode it or dropped its frame)
ORPHAN = -2
#: frame rates from a source's timestamps believed (outside: measured as decoded instead)
MIN_STAMPED_FPS, MAX_STAMPED_FPS = 1.0, 240.0
#: a packet whose frame has not come out by the time this many later packets are demuxed
#: never gives one (H.264 holds at most 16 frames back for reordering; one decoder thread)
REORDER_LIMIT = 32


@dataclass(eq=False, slots=True)
class Segment:
    """One opening of the source (a file's pass, a stream's connection)."""

    #: a stream holding the codec parameters, for the clips' muxers; None: not copied
    template: Any
    #: codec, width, height and codec headers: two segments that agree continue one clip
    signature: tuple[Any, ...]
    width: int
    height: int
    #: the unit of its packets' timestamps (a Fraction; None: unknown)
    time_base: Any = None


@dataclass(eq=False, slots=True)
class Kept:
    """One compressed packet kept for the clips."""

    packet: Any
    #: decoding order, counted over every segment
    index: int
    key: bool
    size: int
    segment: Segment
    #: showing order of its frame, counted over every segment (:data:`PENDING`, :data:`ORPHAN`)
    frame: int = PENDING
    #: time its frame was decoded (UNIX seconds)
    ts: float = math.nan
    #: time it was demuxed (UNIX seconds)
    arrived: float = math.nan
    #: its showing time in the source, in its segment's ``time_base`` (None: none); the
    #: packet's own is rewritten when it is muxed into a clip
    pts: int | None = None
    #: the capture's seq of its frame (-1: none; a frame the capture did not take)
    seq: int = -1
    #: what its frame is matched to it by (its index, or its timestamp)
    match: Any = None


class _Ticket:
    """What a packet hands on to its frame: a token, nothing else (holding the packet would
    keep it alive for ever through PyAV's registry of opaque objects)."""

    __slots__ = ("__weakref__",)


def _template(stream: Any) -> Any:
    """A stream that keeps ``stream``'s codec parameters after its container is closed (the
    input's own stream does not): the stream of an in-memory MP4 that is never written."""
    import av

    holder = av.open(io.BytesIO(), "w", format="mp4")
    return holder.add_stream_from_template(stream)


class PacketTap:
    """The recent packets of a decoded source, for copied clips; fed by its decoder.

    ``span_s``: the packets are kept back to the last keyframe at least this old;
    ``max_bytes``: at most this many bytes, the oldest keyframe interval dropped first.
    """

    def __init__(self, span_s: float, max_bytes: int) -> None:
        self.span_s = span_s
        self.max_bytes = max_bytes
        self.kept: collections.deque[Kept] = collections.deque()
        #: the keyframes among them, oldest first
        self.keys: collections.deque[Kept] = collections.deque()
        self.bytes = 0
        self.segment: Segment | None = None
        self._pending: dict[Any, Kept] = {}
        #: the packets whose frames may still come, in decoding order
        self._waiting: collections.deque[Kept] = collections.deque()
        self._by_opaque = False
        self._next_index = 0
        self._next_frame = 0
        #: the frame decoded last (a PyAV frame), and its packet where it is kept
        self.last_frame: Any = None
        self.last_kept: Kept | None = None
        #: a frame was decoded since :meth:`take` was last called
        self.fresh = False

    @property
    def copying(self) -> bool:
        """Is the source's video copied now (H.264, parameters known, timestamps usable)?"""
        return self.segment is not None and self.segment.template is not None

    # -- the decoder ------------------------------------------------------------------------

    def opened(self, stream: Any) -> None:
        self._orphan()
        context = stream.codec_context
        name = context.name
        extradata = bytes(context.extradata or b"")
        template = None
        if name in COPIED_CODECS and extradata:
            try:
                template = _template(stream)
            except Exception as error:  # an older PyAV, a stream the MP4 muxer refuses
                log.info("the source's video is encoded for the clips, not copied: %s", error)
        # each frame names its packet: the decoder hands the packet's ``opaque`` on to it
        # (PyAV 13 and later); else a frame is matched to its packet by timestamp
        self._by_opaque = hasattr(context, "copy_opaque")
        if self._by_opaque and template is not None:
            context.copy_opaque = True
        self.segment = Segment(template, (name, context.width, context.height, extradata),
                               context.width, context.height, stream.time_base)
        if template is None:  # nothing of it is copied: nor is what came before kept
            self._clear()

    def closed(self) -> None:
        """The decoder closed: nothing is copied until the next :meth:`opened` (a file that
        PyAV opens but cannot decode is read by OpenCV, whose frames are encoded)."""
        self._orphan()
        self.segment = None

    def packet(self, packet: Any) -> None:
        segment = self.segment
        if segment is None or segment.template is None:
            return
        key: Any
        if self._by_opaque:
            # an object of its own: PyAV files a packet's opaque under the object's id, so
            # two packets handed the same object (a small int, shared by every camera of
            # the process) would lose one another's
            key = _Ticket()
            packet.opaque = key
        elif packet.pts is None:  # nothing ties its frame to it: encode instead
            log.info("the source's packets carry no timestamps: its clips are encoded")
            segment.template = None
            self._clear()
            return
        else:
            key = packet.pts
        kept = Kept(packet, self._next_index, bool(packet.is_keyframe), packet.size, segment,
                    match=key, arrived=time.time(), pts=packet.pts)
        self._next_index += 1
        self.kept.append(kept)
        if kept.key:
            self.keys.append(kept)
        self.bytes += kept.size
        self._pending[key] = kept
        self._waiting.append(kept)
        self._expire(kept.index - REORDER_LIMIT)
        self._prune()

    def _expire(self, before: int) -> None:
        """Packets before the ``before``-th still without their frame never give one."""
        waiting = self._waiting
        while waiting and (waiting[0].frame != PENDING or waiting[0].index < before):
            old = waiting.popleft()
            if old.frame == PENDING:
                old.frame = ORPHAN
                if self._pending.get(old.match) is old:
                    del self._pending[old.match]

    def frame(self, frame: Any) -> None:
        number = self._next_frame
        self._next_frame += 1
        self.last_frame = frame
        self.fresh = True
        key = frame.opaque if self._by_opaque else frame.pts
        kept = self._pending.pop(key, None) if key is not None else None
        self.last_kept = kept
        if kept is not None:
            kept.frame, kept.ts = number, time.time()

    # -- the capture loop ------------------------------------------------------------------

    def take(self) -> bool:
        """Was a frame decoded since the last call (PyAV's, not OpenCV's)?"""
        fresh, self.fresh = self.fresh, False
        return fresh

    def colour(self, max_width: int) -> Any:
        """The last frame in colour, at most ``max_width`` wide."""
        return colour(self.last_frame, max_width)

    def frame_rate(self) -> float | None:
        """The source's frames per second: from its own timestamps (those of the packets
        kept of its current opening), else as decoded over the packets kept (a stream's
        start-up burst, a capture slowed at the daemon's start); None: not measurable."""
        segment = self.segment
        stamped = [kept.pts for kept in self.kept  # decoded: frames with none missing
                   if kept.segment is segment and kept.pts is not None and kept.frame >= 0]
        if segment is not None and segment.time_base and len(stamped) >= 2:
            span = (max(stamped) - min(stamped)) * segment.time_base
            rate = (len(stamped) - 1) / float(span) if span else 0.0
            if MIN_STAMPED_FPS <= rate <= MAX_STAMPED_FPS:  # else the timestamps are wrong
                return rate
        shown = [kept for kept in self.kept if kept.frame >= 0]
        if len(shown) < 2:
            return None
        first = min(shown, key=lambda kept: kept.frame)
        last = max(shown, key=lambda kept: kept.frame)
        span = last.ts - first.ts
        return (last.frame - first.frame) / span if span > 0 else None

    # -- keeping -----------------------------------------------------------------------------

    def _orphan(self) -> None:
        """A new segment: frames the last one's decoder still held never come."""
        for kept in self._pending.values():
            kept.frame = ORPHAN
        self._pending.clear()
        self._waiting.clear()

    def _clear(self) -> None:
        self._orphan()
        self.kept.clear()
        self.keys.clear()
        self.bytes = 0
        self.last_kept = None

    def _drop_to(self, target: Kept | None) -> None:
        """Drop the packets before ``target`` (None: all of them)."""
        kept, keys = self.kept, self.keys
        while kept and kept[0] is not target:
            old = kept.popleft()
            self.bytes -= old.size
            if keys and keys[0] is old:
                keys.popleft()
            if old.frame == PENDING and self._pending.get(old.match) is old:
                del self._pending[old.match]

    def _prune(self) -> None:
        """Drop what no clip can start with: the packets before the newest keyframe at least
        ``span_s`` old; then, over ``max_bytes``, the oldest keyframe intervals (all the
        packets where one interval holds more)."""
        keys = self.keys
        horizon = time.time() - self.span_s
        # by arrival: a keyframe's frame comes out a few frames after it at most (or never)
        while len(keys) > 1 and keys[1].arrived <= horizon:
            self._drop_to(keys[1])
        while self.bytes > self.max_bytes and self.kept:
            self._drop_to(keys[1] if len(keys) > 1 else None)


# ----------------------------------------------------------------------------- recorder


class CopyRecorder:
    """Turns a tapped source's packets and event notices into copied clips (one camera),
    through the camera's :class:`ClipWriter` (shared with its encoding recorder)."""

    def __init__(self, camera: str, writer: ClipWriter, settings: RecordingConfig,
                 tap: PacketTap) -> None:
        self.camera = camera
        self.writer = writer
        self.settings = settings
        self.tap = tap
        self.pre_span, self.post_span = settings.pre_s, settings.post_s
        self.clip: Clip | None = None
        #: the index of the last packet handed to the writer for the open clip
        self.sent = -1
        #: the open clip waits for a keyframe to begin
        self.waiting = False
        #: the last frames decoded, for the snapshot: (seq, capture time, PyAV frame)
        self.recent: collections.deque[tuple[int, float, Any]] = collections.deque(
            maxlen=RECENT_FRAMES)
        #: the recent frames the capture took: seq -> (frame index, capture time)
        self.frames: collections.OrderedDict[int, tuple[int, float]] = collections.OrderedDict()
        self.newest_ts = -math.inf
        self._eps = 1e-6

    @property
    def active(self) -> bool:
        return self.tap.copying

    def on_frame(self, seq: int, ts: float) -> None:
        """The capture took frame ``seq`` (captured at ``ts``), the tap's last frame."""
        self.recent.append((seq, ts, self.tap.last_frame))
        kept = self.tap.last_kept
        if kept is not None:
            kept.seq = seq
            self.frames[seq] = (kept.frame, ts)
        self.newest_ts = ts
        frames = self.frames
        while frames and next(iter(frames.values()))[1] < ts - self.tap.span_s:
            frames.popitem(last=False)
        clip = self.clip
        if clip is None:
            return
        if not self.tap.copying:  # the source is no longer copied: the clip ends here
            self.finish()
            return
        self._send(clip)
        if self.clip is None:
            return
        if clip.end_pos is not None and ts > clip.end_pos + self.post_span + self._eps:
            self.finish()
        elif ts - clip.start_pos > self.settings.max_clip_s:
            clip.truncated = True
            self.finish()

    def _send(self, clip: Clip) -> None:
        """Hand the writer the clip's packets whose frames are decoded, in decoding order."""
        kept = self.tap.kept
        if not kept:
            return
        position = self.sent + 1 - kept[0].index
        if position < 0:  # dropped from the tap before they were sent (over max_bytes)
            clip.dropped += kept[0].index - self.sent - 1
            self.finish()
            return
        while position < len(kept):
            item = kept[position]
            if item.frame == PENDING:
                break
            position += 1
            self.sent = item.index
            if item.frame == ORPHAN:
                continue
            if self.waiting:
                if not item.key:
                    continue
                self.waiting = False
            if item.segment.signature != clip.signature:  # the stream changed: the clip ends
                self.finish()
                return
            self.writer.put("packet", clip, packet=item)

    def start(self, seq: int, ts: float, score: float = math.nan,
              box: tuple[float, float, float, float] | None = None) -> None:
        """An event started at frame ``seq`` (captured at ``ts``) with score ``score``."""
        if self.clip is not None:
            self.finish()
        segment = self.tap.segment
        assert segment is not None
        fps = self.tap.frame_rate() or FALLBACK_FPS
        clip = Clip(camera=self.camera, stem=event_stem(self.camera, seq, ts), start_seq=seq,
                    start_ts=ts, start_pos=ts, fps=min(max(fps, 1.0), 240.0),
                    peak_seq=seq, peak_score=score, peak_box=box)
        clip.copied = segment
        clip.signature = segment.signature
        clip.peak_frame, clip.peak_ts = self.frames.get(seq, (-1, ts))
        clip.snapshot = self._snapshot(seq)
        self.clip = clip
        self.writer.put("open", clip)
        # the first packet: the last keyframe shown at or before the pre-roll's start
        horizon = ts - self.pre_span + self._eps
        start: Kept | None = None
        for item in self.tap.kept:
            if not item.key or item.frame < 0 or item.segment.signature != clip.signature:
                continue
            if start is None or item.ts <= horizon:
                start = item
            if item.ts > horizon:
                break
        if start is None:
            self.waiting = True
            self.sent = self.tap.kept[-1].index if self.tap.kept else self.sent
        else:
            self.waiting = False
            self.sent = start.index - 1
        self._send(clip)

    def peak(self, seq: int, score: float,
             box: tuple[float, float, float, float] | None = None) -> None:
        clip = self.clip
        if clip is None or clip.end_seq is not None:
            return
        clip.peak_seq, clip.peak_score, clip.peak_box = seq, score, box
        known = self.frames.get(seq)
        if known is not None:
            clip.peak_frame, clip.peak_ts = known
        clip.snapshot = self._snapshot(seq)

    def _snapshot(self, seq: int) -> Entry | None:
        """The JPEG of frame ``seq`` where it is among the last frames decoded; None: the
        writer decodes it from the finished clip (from the keyframe before it)."""
        for known, ts, frame in reversed(self.recent):
            if known == seq:
                ok, data = cv2.imencode(".jpg", colour(frame, self.settings.max_width),
                                        [int(cv2.IMWRITE_JPEG_QUALITY),
                                         self.settings.jpeg_quality])
                return Entry(seq, ts, ts, data.tobytes()) if ok else None
        return None

    def end(self, seq: int, ts: float, peak_score: float) -> None:
        clip = self.clip
        if clip is None:
            return
        clip.end_seq, clip.end_ts, clip.end_peak = seq, ts, peak_score
        clip.end_pos = ts
        if self.newest_ts >= ts + self.post_span - self._eps:
            self.finish()

    def finish(self) -> None:
        """Close the open clip as it is."""
        clip = self.clip
        if clip is None:
            return
        self.clip = None
        if clip.end_seq is None:
            clip.interrupted = not clip.truncated
            if self.frames:
                last_seq = next(reversed(self.frames))
                clip.end_seq, clip.end_ts = last_seq, self.frames[last_seq][1]
        self.writer.put("close", clip)


#: frame rate of a clip whose source rate cannot be measured
FALLBACK_FPS = 25.0
