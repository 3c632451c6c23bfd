"""Replay: recorded footage through the live pipeline's code, offline.

``forecaster replay SOURCE...`` reads each video with the capture code path (the same
source classes and :func:`~forecaster.sources.preprocess.to_gray_resized`), feeds the frames to
the same :class:`~forecaster.detection.engine.InferenceEngine` and :class:`~forecaster.detection.scorer.Scorer`
the daemon runs, and writes what came out:

- ``scores.csv``: one row per scored frame: ``camera, seq, ts, mse, psnr, score, anomaly``
  (and ``label`` when labels are known); ``camera`` is the video's camera id, as on the
  wire and in the summary (its name made topic-safe, ``-2`` and on for repeated names);
- ``summary.json``: per video and in total: frames, frames scored, frames per second,
  events (start/end frame and peak score), ROC AUC where labels are known;
- ``timeline.png``: per video the score over time, the scorer's ``threshold_on``,
  anomalous ground-truth frames shaded and detected events marked;
- with ``preview``: ``<video>.mp4`` per video (actual | predicted | error heat map);
- with ``publish``: every message on the wire protocol, each video ending with the
  ``end`` event of an episode still open, then a ``status`` message with ``ended: true``.

Frames go to the engine in chunks (one model call per chunk); the recurrent state is
carried between chunks, so every score equals the one the daemon computes frame by frame
when it keeps up. Nothing is dropped. A reader thread decodes the video, converts it to
gray and resizes it (to the model's size and the motion cue's) up to
:data:`READ_AHEAD_FRAMES` frames ahead, while the main thread computes the cue, runs the
model and scores. With ``realtime`` each frame is read and fed on its own, paced at the
source's nominal rate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.config import Config, RecordingConfig, ScorerConfig, with_endpoint
from forecaster.detection.engine import (
    LoadedModel,
    check_model,
    load,
    model_path,
    prediction_to_uint8,
)
from forecaster.detection.flow import MotionCue
from forecaster.detection.scorer import cue_height, cue_place
from forecaster.errors import DataError, UsageError
from forecaster.offline.outputs import fresh_dir, prepare_out_dir
from forecaster.offline.preview import PreviewWriter
from forecaster.offline.replay_feed import DEFAULT_CHUNK, RecordingStepper, feed_chunk
from forecaster.offline.replay_inputs import ReplayVideo, camera_id, label_mismatch, plan
from forecaster.offline.replay_results import EpisodeRecord, VideoResult, plot_replay, summarize
from forecaster.offline.replay_time import VideoClock
from forecaster.offline.scores_csv import ScoresWriter
from forecaster.protocol import Event, Forecast, Message, Score, Status
from forecaster.recording.event_board import EventNotes
from forecaster.recording.recorder import Entry, Recorder
from forecaster.recording.retention import MB, Retention
from forecaster.sources.preprocess import to_gray_resized
from forecaster.sources.read_ahead import ReadAhead
from forecaster.sources.readers import SYNTHETIC_PREFIX, FrameSource, SyntheticSource, open_source

log = logging.getLogger("forecaster.replay")

#: frame rate used to pace (``realtime``) and to write previews of sources that state none
FALLBACK_FPS = 25.0
#: the highest ``fps`` (a camera's limit in a config, too)
MAX_FPS = 1000.0
#: messages a subscriber may have queued before the publisher drops (replay runs at full speed)
REPLAY_SNDHWM = 100_000


@dataclass
class ReplayOptions:
    out: Path
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    chunk: int = DEFAULT_CHUNK
    realtime: bool = False
    preview: bool = False
    progress: bool = True
    #: frames per second of sources that state none (image folders): pacing, previews
    fps: float | None = None
    #: record each event into ``out/events`` (:mod:`forecaster.recording.recorder`) with these settings
    clips: RecordingConfig | None = None


#: frames decoded ahead of the model by replay's reader thread
READ_AHEAD_FRAMES = 64

#: a frame as replay's reader makes it: gray at the model size, capture time, the frame at
#: the motion cue's size (None: no cue), label, the source frame's height and width, the
#: source frame itself (None unless it is recorded), its position in the file (None: not
#: known)
_Read = tuple[np.ndarray, float, "np.ndarray | None", "int | None", tuple[int, int],
              "np.ndarray | None", "float | None"]
_Frame = tuple[np.ndarray, float, float, "int | None", tuple[int, int], "np.ndarray | None",
               "float | None"]


def _read(source: FrameSource, size: tuple[int, int], cue: MotionCue | None,
          keep: bool = False) -> Iterator[_Read]:
    """The source's frames, decoded, converted to gray once and resized to the model's size
    and the cue's (stateless: replay runs it in a thread, ahead of the rest); ``keep``: pass
    the source frame on too (for event clips)."""
    while (frame := source.read()) is not None:
        gray = frame.gray_image()  # once, for the model's size and the cue's
        small = None if cue is None else cue.resize(gray)
        shape = (int(gray.shape[0]), int(gray.shape[1]))
        yield (to_gray_resized(gray, size), frame.ts, small, frame.label, shape,
               frame.image if keep else None, frame.pos_s)


def _frames(reads: Iterable[_Read], cue: MotionCue | None) -> Iterator[_Frame]:
    """(gray frame at the model size, capture time, motion cue, label, the source frame's
    height and width, the source frame or None, its position or None) until the end of the
    source; the cue as the capture process makes it (NaN without ``cue``)."""
    for image, ts, small, label, shape, raw, pos in reads:
        value = math.nan if cue is None or small is None else cue.measure(small, shape)
        yield image, ts, value, label, shape, raw, pos


class Replayer:
    """Replays videos through one engine; publishes when given a publisher."""

    def __init__(self, model: LoadedModel, options: ReplayOptions, publisher: Any = None) -> None:
        self.model = model
        self.options = options
        self.publisher = publisher
        self.stepper = RecordingStepper(model.runner)
        self.engine = model.engine(options.scorer, self.stepper)
        self.size = model.size

    def _publish(self, messages: Sequence[Message]) -> None:
        if self.publisher is not None:
            for message in messages:
                self.publisher.send(message)

    def run_video(self, video: ReplayVideo, writer: ScoresWriter) -> VideoResult:
        from tqdm import tqdm

        options = self.options
        engine = self.engine
        camera = video.camera
        cam = engine.add_camera(camera)
        result = VideoResult(name=video.name, camera=camera, source=video.uri)
        cam.scorer.terms_log = result.terms
        synthetic_labels: list[int] = []
        source = open_source(video.uri, color=options.clips is not None,  # clips in colour
                             color_width=None if options.clips is None
                             else options.clips.max_width)
        chunk = 1 if options.realtime else max(1, options.chunk)
        height, width = self.size
        frames = np.empty((chunk, height, width), np.uint8)
        stamps = np.empty(chunk, np.float64)  # the frames' times in the video
        arrivals = np.empty(chunk, np.float64)  # when each was read (for the latency)
        cues = np.empty(chunk, np.float64)
        rows = cue_height(options.scorer.mode, self.model.card.calibration)
        cue = None if rows is None else MotionCue(
            rows, cue_place(options.scorer.mode, self.model.card.calibration))
        preview: PreviewWriter | None = None
        previous: np.ndarray | None = None  # prediction of the next frame to come
        seq = 0
        open_episode: EpisodeRecord | None = None
        started = time.perf_counter()

        def label_of(s: int) -> int | None:
            if video.labels is not None:
                return int(video.labels[s]) if s < len(video.labels) else None
            return synthetic_labels[s] if s < len(synthetic_labels) else None

        recorder: Recorder | None = None
        notes: EventNotes | None = None
        entries: list[Entry] = []

        def flush(count: int) -> None:
            nonlocal previous, open_episode
            first = seq - count
            seqs = range(first, seq)
            chunk_result = feed_chunk(engine, self.stepper, camera, frames[:count],
                                      seqs, stamps[:count], cues[:count])
            now = time.time()  # a score's latency: from when its frame was read
            chunk_result.messages = [
                replace(m, latency_ms=(now - arrivals[m.seq - first]) * 1000.0)
                if isinstance(m, Score) else m for m in chunk_result.messages]
            if notes is not None:
                chunk_result.messages = [notes.note(m) for m in chunk_result.messages]
            if chunk_result.reset:
                result.state_resets += 1
            scores_by_seq: dict[int, list[Message]] = {}
            for message in chunk_result.messages:
                if isinstance(message, Score):
                    writer.write(camera, message, label_of(message.seq))
                    result.seqs.append(message.seq)
                    result.scores.append(message.score)
                elif isinstance(message, Event):
                    if message.state == "start":
                        open_episode = EpisodeRecord(message.seq, None, message.peak_score)
                        result.events.append(open_episode)
                    elif open_episode is not None:
                        open_episode.end_seq = message.seq
                        open_episode.peak_score = message.peak_score
                        open_episode = None
                if not isinstance(message, Forecast):
                    scores_by_seq.setdefault(message.seq, []).append(message)
            if recorder is not None:
                for i in range(count):
                    recorder.add_scored(entries[i], scores_by_seq.get(first + i, []))
                entries.clear()
            predictions = chunk_result.predictions
            if preview is not None:
                scored = {m.seq: m for ms in scores_by_seq.values() for m in ms
                          if isinstance(m, Score)}
                for i in range(count):
                    frame_score = scored.get(first + i)
                    preview.write(frames[i], previous, first + i,
                                  None if frame_score is None else frame_score.score,
                                  anomaly=frame_score is not None and frame_score.anomaly,
                                  label=label_of(first + i))
                    previous = None if predictions is None else predictions[i]
            if self.publisher is not None:
                # per frame, as the daemon publishes when it keeps up: score, event, forecast
                messages: list[Message] = []
                for i, s in enumerate(seqs):
                    messages.extend(scores_by_seq.get(s, []))
                    if predictions is not None:
                        messages.append(Forecast(camera=camera, seq=s, ts=float(stamps[i]),
                                                 target_seq=s + 1,
                                                 frame=prediction_to_uint8(predictions[i])))
                self._publish(messages)

        fps = FALLBACK_FPS
        with source, contextlib.ExitStack() as stack:
            fps = source.nominal_fps or options.fps or FALLBACK_FPS
            clock = VideoClock(video.uri, fps)
            result.time_from = "file" if clock.file_time is not None else "position"
            pacer = None
            if options.realtime and not isinstance(source, SyntheticSource):
                from forecaster.sources.pacing import RateLimiter

                pacer = RateLimiter(fps)
            if options.clips is not None:
                folder = options.out / "events"
                recorder = Recorder(camera, folder, options.clips, model=str(self.model.path),
                                    fps=fps, retention=Retention(
                                        folder, min_free_bytes=options.clips.min_free_mb * MB),
                                    box_size=self.size)
                notes = EventNotes([camera])
            bar = tqdm(total=video.expected_frames, desc=camera, unit="frame",
                       file=sys.stderr, disable=None if options.progress else True,
                       leave=False, mininterval=0.5)
            try:
                pending = 0
                reads: Iterable[_Read] = _read(source, self.size, cue,
                                               keep=recorder is not None)
                if not options.realtime:  # decode in a thread while the model runs
                    # (source frames kept for clips: fewer of them ahead, bounded memory)
                    depth = max(READ_AHEAD_FRAMES, chunk) if recorder is None else 8
                    reads = stack.enter_context(ReadAhead(reads, depth=depth,
                                                          name=f"read:{camera}"))
                for image, read_at, value, label, shape, raw, pos in _frames(reads, cue):
                    ts = clock.ts(seq, pos)
                    if options.preview and preview is None:  # the source's aspect ratio
                        preview = PreviewWriter(options.out / f"{video.camera}.mp4", self.size,
                                                fps, aspect=shape[1] / shape[0])
                    if recorder is not None and raw is not None:
                        entries.append(recorder.encode(raw, seq, ts))
                    if pacer is not None:
                        wait = pacer.wait_time(time.monotonic())
                        if wait > 0:
                            time.sleep(wait)
                        pacer.admit(time.monotonic())
                    if video.labels is not None and seq >= len(video.labels):
                        raise label_mismatch(video.name, seq + 1, len(video.labels),
                                             at_least=True)
                    if label is not None:
                        synthetic_labels.append(label)
                    frames[pending] = image
                    stamps[pending] = ts
                    arrivals[pending] = read_at
                    cues[pending] = value
                    pending += 1
                    seq += 1
                    if pending == chunk:
                        flush(pending)
                        bar.update(pending)
                        pending = 0
                if pending:
                    flush(pending)
                    bar.update(pending)
            finally:
                bar.close()
                if preview is not None:
                    preview.close()
                if recorder is not None:
                    last = cam.last_seq
                    if cam.scorer.anomaly and last is not None and cam.last_ts is not None:
                        recorder.end(last, cam.last_ts, cam.scorer.peak_score)
                    recorder.close()
            result.skipped = source.skipped
        result.seconds = time.perf_counter() - started
        result.frames = seq
        if video.labels is not None:
            if seq != len(video.labels):
                raise label_mismatch(video.name, seq, len(video.labels))
            result.labels = [int(v) for v in video.labels]
        elif synthetic_labels and len(synthetic_labels) == seq:
            result.labels = synthetic_labels
        if open_episode is not None:
            open_episode.peak_score = cam.scorer.peak_score
        cam.fit.finish()
        result.model_fit, result.model_fit_median = cam.fit.verdict, cam.fit.median
        if cam.fit.verdict == "misfit":
            log.warning("%s", cam.fit.message(f"video {video.name}", str(self.model.path),
                                              video.uri))
        if self.publisher is not None:
            end = engine.end_of_stream(camera)  # as the daemon: an open episode ends first
            if end is not None:
                self.publisher.send(end if notes is None else notes.note(end))
            self.publisher.send(Status(
                camera=camera,
                seq=seq - 1,
                ts=time.time(),
                fps=seq / result.seconds if result.seconds > 0 else 0.0,
                frames_captured=seq,
                frames_dropped=result.skipped,
                state_resets=result.state_resets,
                connected=False,
                ended=True,
                reason="end of stream",
            ))
        return result


#: the files every replay writes into its output folder (besides the previews)
RESULT_FILES = ("scores.csv", "summary.json", "timeline.png")


def earlier_results(folder: Path) -> list[Path]:
    """The result files of an earlier replay into ``folder``: the fixed files and the
    preview of each video its ``summary.json`` names (absent after an interrupted run)."""
    files = [folder / name for name in RESULT_FILES]
    try:
        videos = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["videos"]
        cameras = [str(video["camera"]) for video in videos]
    except (OSError, ValueError, KeyError, TypeError):  # no summary, or not a replay's
        return files
    return files + [folder / f"{camera}.mp4" for camera in cameras if camera_id(camera) == camera
                    ] + sorted((folder / "events").glob("*/*"))


def replay_command(
    sources: Sequence[str],
    *,
    out: str | Path | None = None,
    labels: str | None = None,
    model: str | None = None,
    config: Config | None = None,
    publish: bool = False,
    endpoint: str | None = None,
    realtime: bool = False,
    preview: bool = False,
    fps: float | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
    publisher: Any = None,
    force: bool = False,
    clips: bool = False,
) -> dict[str, Any]:
    """Replay ``sources`` and write scores.csv, summary.json, timeline.png (and previews;
    with ``clips`` each event's recordings under ``out/events``).

    ``out`` defaults to a fresh folder ``<cache>/replay/<date>-<time>``
    (:mod:`forecaster.offline.outputs`); an ``out`` holding an earlier replay's results is refused
    unless ``force``, which removes them first.

    Inputs, labels and the model card are checked before TensorFlow is loaded. With
    ``publish`` a :class:`~forecaster.ipc.publisher.Publisher` is bound on ``endpoint`` (else the
    config's ``publish.endpoint``) before the model loads, so subscribers started first have
    joined when the first frame is published; ``publisher`` passes one in instead.
    Returns the summary.
    """
    if chunk < 1:
        raise DataError(f"chunk must be at least 1 frame, got {chunk}")
    if fps is not None and not 0 < fps <= MAX_FPS:
        raise UsageError(f"--fps must be above 0 and at most {MAX_FPS:g} frames per second, "
                         f"got {fps:g}")
    cfg = config if config is not None else Config()
    videos = plan(sources, labels, realtime=realtime)
    path = model_path(model, config)
    card = check_model(path, cfg.scorer)
    own_publisher = None
    if publish and publisher is None:
        # the daemon's [publish] section and rules, CURVE and the loopback rule included
        from forecaster.ipc.publisher import publisher_from_config

        if endpoint is not None:
            cfg = with_endpoint(cfg, endpoint)
        if cfg.publish.curve:
            from forecaster.keys import warn_if_readable_by_others

            warn_if_readable_by_others(cfg.publish.curve_secret_key)
        own_publisher = publisher = publisher_from_config(
            cfg.publish,
            sndhwm=max(cfg.publish.sndhwm, REPLAY_SNDHWM),
            linger_ms=max(cfg.publish.linger_ms, 2000),
        )
    try:
        if out is None:
            out_dir = fresh_dir("replay")
        else:  # after the endpoint is bound: a refused one leaves earlier results alone
            out_dir = Path(out)
            prepare_out_dir(out_dir, earlier_results(out_dir), force=force)
        loaded = load(path)
        options = ReplayOptions(out=out_dir, scorer=cfg.scorer, chunk=chunk, realtime=realtime,
                                preview=preview, progress=progress, fps=fps,
                                clips=cfg.recording if clips else None)
        replayer = Replayer(loaded, options, publisher)
        with_labels = any(v.labels is not None for v in videos) or any(
            v.uri.lower().startswith(SYNTHETIC_PREFIX) for v in videos)
        writer = ScoresWriter(out_dir / "scores.csv", with_labels)
        results = []
        try:
            for video in videos:
                result = replayer.run_video(video, writer)
                results.append(result)
                log.info("%s: %d frames, %d scored, %.0f frames/s", video.camera, result.frames,
                         result.frames_scored, result.frames / max(result.seconds, 1e-9))
        finally:
            writer.close()
    finally:
        if own_publisher is not None:
            own_publisher.close()
    summary = summarize(results, {
        "out": str(out_dir),
        "model": str(path),
        "model_card": {"arch": card.arch, "size": [card.height, card.width],
                       "window": card.window, "calibration": card.calibration},
        "scorer": cfg.scorer.model_dump(),
        "chunk": 1 if realtime else chunk,
        "realtime": realtime,
        "published": None if publisher is None else getattr(publisher, "sent", None),
    })
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n",
                                          encoding="utf-8")
    plot_replay(out_dir / "timeline.png", results, cfg.scorer.threshold_on)
    return summary
