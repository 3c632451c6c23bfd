"""Replay: recorded footage through the live pipeline's code, offline.

``forecaster replay SOURCE...`` reads each video with the capture code path (the same
source classes and :func:`~forecaster.preprocess.to_gray_resized`), feeds the frames to
the same :class:`~forecaster.engine.InferenceEngine` and :class:`~forecaster.scorer.Scorer`
the daemon runs, and writes what came out:

- ``scores.csv``: one row per scored frame: ``camera, seq, ts, mse, psnr, score, anomaly``
  (and ``label`` when labels are known); ``camera`` is the video name;
- ``summary.json``: per video and in total: frames, frames scored, frames per second,
  events (start/end frame and peak score), ROC AUC where labels are known;
- ``timeline.png``: per video the score over time, the scorer's ``threshold_on``,
  anomalous ground-truth frames shaded and detected events marked;
- with ``preview``: ``<video>.mp4`` per video (actual | predicted | error heat map);
- with ``publish``: every message on the wire protocol, each video ending with the
  ``end`` event of an episode still open, then a ``status`` message with ``ended: true``.

Frames go to the engine in chunks (one model call per chunk); the recurrent state is
carried between chunks, so every score equals the one the daemon computes frame by frame
when it keeps up. Nothing is dropped. With ``realtime`` each frame is fed on its own,
paced at the source's nominal rate.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from forecaster.config import Config, ScorerConfig
from forecaster.datasets import DEFAULT_SYNTHETIC_FRAMES, VideoRef, expand_videos, load_labels
from forecaster.engine import (
    Floats,
    InferenceEngine,
    LoadedModel,
    Message,
    check_model,
    load,
    model_path,
    prediction_to_uint8,
)
from forecaster.errors import DataError, SourceError
from forecaster.flow import MotionCue
from forecaster.metrics import roc_auc, undefined_reason
from forecaster.outputs import fresh_dir, prepare_out_dir
from forecaster.preprocess import to_gray_resized
from forecaster.protocol import Event, Forecast, Score, Status
from forecaster.scorer import cue_height
from forecaster.sources import (
    SYNTHETIC_PREFIX,
    FileSource,
    FolderSource,
    FrameSource,
    SyntheticSource,
    image_files,
    open_source,
    parse_synthetic_uri,
)

if TYPE_CHECKING:
    from forecaster.model.runners import Runner

log = logging.getLogger("forecaster.replay")

DEFAULT_CHUNK = 128
#: frame rate used to pace (``realtime``) and to write previews of sources that state none
FALLBACK_FPS = 25.0
#: messages a subscriber may have queued before the publisher drops (replay runs at full speed)
REPLAY_SNDHWM = 100_000
PREVIEW_HEIGHT = 256
#: videos drawn in timeline.png (one panel each)
MAX_PANELS = 24
CSV_COLUMNS = ("camera", "seq", "ts", "mse", "psnr", "score", "anomaly")
_CAMERA_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# --- the model and the engine ------------------------------------------------------------


class RecordingStepper:
    """Wraps a :class:`~forecaster.model.step.Stepper` and keeps the last predictions.

    The engine publishes the forecast of the newest frame of a call only; the preview and
    the per-frame forecasts of a replay need all of them.
    """

    def __init__(self, stepper: Runner) -> None:
        self.stepper = stepper
        self.height, self.width = stepper.height, stepper.width
        #: (B, T, H, W, 1) predictions of the last ``run`` call
        self.last: np.ndarray | None = None

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return list(self.stepper.initial_state(batch))

    def run(self, frames: np.ndarray, state: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        predictions, new_state = self.stepper.run(frames, state)
        self.last = predictions
        return predictions, new_state


@dataclass
class ChunkResult:
    messages: list[Message]
    #: prediction made from each frame of the chunk (T, H, W) float32, or None
    predictions: np.ndarray | None
    #: frames fed after a reset because the model returned non-finite values
    reset: bool = False


def feed_chunk(
    engine: InferenceEngine,
    stepper: RecordingStepper,
    camera: str,
    frames: np.ndarray,
    seqs: Sequence[int],
    stamps: Floats,
    cues: np.ndarray | None = None,
) -> ChunkResult:
    """Feed one chunk (with the frames' motion cues, when the scorer uses them); on
    non-finite output reset and re-prime from the chunk's last frames.

    The re-prime mirrors the worker, which rebuilds the state from the frames in its ring.
    """
    result = engine.process(camera, frames, seqs, stamps, cues)
    if not result.non_finite:
        predictions = None if stepper.last is None else stepper.last[0, :, :, :, 0]
        return ChunkResult(result.messages, predictions)
    log.warning("%s: model output not finite at frames %d-%d; resetting its state",
                camera, seqs[0], seqs[-1])
    messages: list[Message] = []
    end = engine.reset(camera)
    if end is not None:
        messages.append(end)
    tail = max(0, len(frames) - engine.window)
    result = engine.process(camera, frames[tail:], seqs[tail:], stamps[tail:],
                            None if cues is None else cues[tail:])
    if result.non_finite:
        engine.reset(camera)
        return ChunkResult(messages, None, reset=True)
    messages.extend(result.messages)
    return ChunkResult(messages, None, reset=True)


def score_video(
    engine: InferenceEngine,
    stepper: RecordingStepper,
    camera: str,
    frames: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    cues: np.ndarray | None = None,
) -> list[Score]:
    """Score all ``frames`` (T, H, W) uint8 of one video (with their motion cues, when the
    scorer uses them); one Score per scored frame."""
    engine.add_camera(camera)
    scores: list[Score] = []
    stamps = np.zeros(len(frames))
    for start in range(0, len(frames), chunk):
        stop = min(start + chunk, len(frames))
        result = feed_chunk(engine, stepper, camera, frames[start:stop],
                            range(start, stop), stamps[start:stop],
                            None if cues is None else cues[start:stop])
        scores.extend(m for m in result.messages if isinstance(m, Score))
    return scores


# --- inputs --------------------------------------------------------------------------------


@dataclass
class ReplayVideo:
    """One video to replay."""

    name: str  #: video name (labels key)
    uri: str  #: source string
    camera: str  #: camera id on the wire (the name, made topic-safe and unique)
    labels: np.ndarray | None = None  #: from a labels file
    expected_frames: int | None = None  #: known before reading (folders, synthetic)


def camera_id(name: str) -> str:
    """A valid camera id (``[A-Za-z0-9_.-]+``) for a video name."""
    return _CAMERA_UNSAFE.sub("_", name).strip("_")[:64] or "video"


def _synthetic_uri(uri: str, realtime: bool) -> str:
    """A finite synthetic scene: unpaced (or its own rate with realtime), frames bounded."""
    params = parse_synthetic_uri(uri)
    frames = params.frames or DEFAULT_SYNTHETIC_FRAMES
    fps = params.fps if realtime else 0.0
    return replace(params, fps=fps, frames=frames).uri()


def count_frames(uri: str) -> int | None:
    """Frames a replay of ``uri`` will read, counted without decoding pixels where possible.

    Image folders: the image files (an unreadable image is skipped on reading, which the
    replay notices at the end). Video files: frames grabbed to the end (the header's count is
    never trusted). Synthetic scenes: their ``frames``.
    """
    if uri.lower().startswith(SYNTHETIC_PREFIX):
        return parse_synthetic_uri(uri).frames or DEFAULT_SYNTHETIC_FRAMES
    path = Path(uri)
    if path.is_dir():
        return len(image_files(path))
    import cv2

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        count = 0
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


def label_mismatch(name: str, frames: int, labels: int, *, at_least: bool = False) -> DataError:
    has = f"at least {frames}" if at_least else str(frames)
    return DataError(
        f"labels of video {name!r} do not match its frames: the video has {has} frames, "
        f"the labels file has {labels} labels"
    )


def plan(sources: Sequence[str], labels_path: str | None, realtime: bool = False) -> list[ReplayVideo]:
    """The videos ``sources`` name, checked before any model is loaded.

    Every source is opened once (a missing or corrupt file fails here), and every video's
    frame count is compared with its labels. DataError / SourceError otherwise.
    """
    refs: list[VideoRef] = expand_videos(list(sources))
    labels = load_labels(labels_path) if labels_path else None
    if labels is not None and not any(ref.name in labels for ref in refs):
        names = ", ".join(ref.name for ref in refs[:5])
        raise DataError(
            f"labels file {labels_path} names none of the videos ({names}"
            f"{', ...' if len(refs) > 5 else ''}); its keys must be the video names"
        )
    videos: list[ReplayVideo] = []
    taken: set[str] = set()
    for ref in refs:
        uri = _synthetic_uri(ref.uri, realtime) if ref.uri.lower().startswith(SYNTHETIC_PREFIX) else ref.uri
        source = open_source(uri)
        with source:  # opening reads the first frame: a corrupt file fails here
            pass
        camera = camera_id(ref.name)
        base, n = camera, 1
        while camera in taken:
            n += 1
            camera = f"{base}-{n}"
        taken.add(camera)
        video = ReplayVideo(name=ref.name, uri=uri, camera=camera)
        if isinstance(source, (SyntheticSource, FolderSource)):
            video.expected_frames = count_frames(uri)
        if labels is not None:
            if ref.name in labels:
                video.labels = labels[ref.name]
                frames = video.expected_frames
                if frames is None and isinstance(source, FileSource):
                    frames = video.expected_frames = count_frames(uri)
                if frames is not None and frames != len(video.labels):
                    raise label_mismatch(ref.name, frames, len(video.labels))
            else:
                log.warning("labels file %s has no labels for video %r", labels_path, ref.name)
        videos.append(video)
    return videos


# --- results -----------------------------------------------------------------------------


@dataclass
class EpisodeRecord:
    start_seq: int
    end_seq: int | None = None
    peak_score: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return {"start_seq": self.start_seq, "end_seq": self.end_seq,
                "peak_score": _finite(self.peak_score)}


@dataclass
class VideoResult:
    """What a replay of one video produced."""

    name: str
    camera: str
    source: str
    frames: int = 0
    seconds: float = 0.0
    state_resets: int = 0
    skipped: int = 0
    seqs: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    #: per frame (index = seq), when known
    labels: list[int] | None = None
    events: list[EpisodeRecord] = field(default_factory=list)
    #: does the model fit this video (:mod:`forecaster.fit`): "ok", "misfit", or
    #: "checking" when too few frames were scored to tell
    model_fit: str = "checking"
    #: the median score the verdict was made on (NaN: none made)
    model_fit_median: float = math.nan

    @property
    def frames_scored(self) -> int:
        return len(self.seqs)

    def scored_labels(self) -> np.ndarray | None:
        if self.labels is None:
            return None
        return np.asarray(self.labels, dtype=np.uint8)[np.asarray(self.seqs, dtype=np.int64)]

    def auc(self) -> tuple[float | None, str | None]:
        """ROC AUC of the scored frames against their labels, or (None, why not)."""
        return _auc(self.scored_labels(), np.asarray(self.scores, dtype=np.float64))

    def to_json(self) -> dict[str, Any]:
        auc, why = self.auc()
        labels = self.scored_labels()
        return {
            "name": self.name,
            "camera": self.camera,
            "source": self.source,
            "frames": self.frames,
            "frames_scored": self.frames_scored,
            "frames_unscored": self.frames - self.frames_scored,
            "seconds": round(self.seconds, 3),
            "fps": round(self.frames / self.seconds, 1) if self.seconds > 0 else None,
            "state_resets": self.state_resets,
            "frames_skipped": self.skipped,
            "events": [e.to_json() for e in self.events],
            "labelled": self.labels is not None,
            "anomalous_frames": None if self.labels is None else int(np.sum(self.labels)),
            "anomalous_frames_scored": None if labels is None else int(labels.sum()),
            "auc": auc,
            "auc_undefined": why,
            "model_fit": self.model_fit,
            "model_fit_median": (round(self.model_fit_median, 3)
                                 if math.isfinite(self.model_fit_median) else None),
        }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _auc(labels: np.ndarray | None, scores: np.ndarray) -> tuple[float | None, str | None]:
    if labels is None:
        return None, "no labels"
    finite = np.isfinite(scores)
    labels, scores = labels[finite], scores[finite]
    why = undefined_reason(labels)
    if why is not None:
        return None, why
    return roc_auc(labels, scores), None


def summarize(results: Sequence[VideoResult], extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json: per video and in total."""
    frames = sum(r.frames for r in results)
    seconds = sum(r.seconds for r in results)
    labelled = [r for r in results if r.labels is not None]
    total: dict[str, Any] = {
        "videos": len(results),
        "frames": frames,
        "frames_scored": sum(r.frames_scored for r in results),
        "seconds": round(seconds, 3),
        "fps": round(frames / seconds, 1) if seconds > 0 else None,
        "events": sum(len(r.events) for r in results),
        "state_resets": sum(r.state_resets for r in results),
        "labelled_videos": len(labelled),
        "misfit_videos": [r.name for r in results if r.model_fit == "misfit"],
    }
    if labelled:
        labels = np.concatenate([r.scored_labels() for r in labelled])
        scores = np.concatenate([np.asarray(r.scores, dtype=np.float64) for r in labelled])
        total["auc"], total["auc_undefined"] = _auc(labels, scores)
        per_video = [r.auc()[0] for r in labelled]
        defined = [a for a in per_video if a is not None]
        total["auc_mean_per_video"] = float(np.mean(defined)) if defined else None
    else:
        total["auc"], total["auc_undefined"] = None, "no labels"
    return {**extra, "videos": [r.to_json() for r in results], "total": total}


class ScoresWriter:
    """scores.csv, written row by row while the replay runs."""

    def __init__(self, path: Path, with_labels: bool) -> None:
        self.with_labels = with_labels
        self._file: TextIO = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow((*CSV_COLUMNS, "label") if with_labels else CSV_COLUMNS)

    def write(self, name: str, score: Score, label: int | None) -> None:
        row: list[object] = [name, score.seq, repr(score.ts), repr(score.mse), repr(score.psnr),
                             repr(score.score), int(score.anomaly)]
        if self.with_labels:
            row.append("" if label is None else int(label))
        self._csv.writerow(row)

    def close(self) -> None:
        self._file.close()


def read_scores_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a scores.csv with typed values (label None where absent)."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            label = row.get("label")
            rows.append({
                "camera": row["camera"],
                "seq": int(row["seq"]),
                "ts": float(row["ts"]),
                "mse": float(row["mse"]),
                "psnr": float(row["psnr"]),
                "score": float(row["score"]),
                "anomaly": row["anomaly"] == "1",
                "label": int(label) if label not in (None, "") else None,
            })
    return rows


# --- preview -----------------------------------------------------------------------------


class PreviewWriter:
    """``actual | predicted | error heat map`` side by side, upscaled, as an mp4v MP4."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        import cv2

        height, width = size
        self.scale = max(1, PREVIEW_HEIGHT // height)
        self.height, self.width = height * self.scale, width * self.scale
        self.path = path
        fourcc = cv2.VideoWriter.fourcc(*"mp4v")
        self._writer = cv2.VideoWriter(str(path), fourcc, fps, (3 * self.width, self.height))
        if not self._writer.isOpened():
            raise SourceError(f"cannot write preview video {path} (OpenCV has no mp4v encoder?)")

    def write(self, actual: np.ndarray, predicted: np.ndarray | None, seq: int,
              score: float | None) -> None:
        import cv2

        up = (self.width, self.height)
        actual_f = actual.astype(np.float32) / 255.0
        if predicted is None:
            predicted_u8 = np.zeros_like(actual)
            error = np.zeros(actual.shape, np.float32)
        else:
            predicted_u8 = prediction_to_uint8(predicted)
            error = np.abs(actual_f - predicted)
        heat = cv2.applyColorMap(np.clip(error * 4.0 * 255.0, 0, 255).astype(np.uint8),
                                 cv2.COLORMAP_JET)
        panels = [
            cv2.cvtColor(cv2.resize(actual, up, interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR),
            cv2.cvtColor(cv2.resize(predicted_u8, up, interpolation=cv2.INTER_NEAREST),
                         cv2.COLOR_GRAY2BGR),
            cv2.resize(heat, up, interpolation=cv2.INTER_NEAREST),
        ]
        canvas = np.concatenate(panels, axis=1)
        text = f"{seq}" if score is None or not math.isfinite(score) else f"{seq}  score {score:.2f}"
        cv2.putText(canvas, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1,
                    cv2.LINE_AA)
        self._writer.write(canvas)

    def close(self) -> None:
        self._writer.release()


# --- the replay --------------------------------------------------------------------------


@dataclass
class ReplayOptions:
    out: Path
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    chunk: int = DEFAULT_CHUNK
    realtime: bool = False
    preview: bool = False
    progress: bool = True


def _frames(source: FrameSource, size: tuple[int, int], cue: MotionCue | None
            ) -> Iterator[tuple[np.ndarray, float, float, int | None]]:
    """(gray frame at the model size, capture time, motion cue, label) until the end of the
    source; the cue as the capture process makes it (NaN without ``cue``)."""
    while (frame := source.read()) is not None:
        value = math.nan if cue is None else cue(frame.image)
        yield to_gray_resized(frame.image, size), frame.ts, value, frame.label


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
        synthetic_labels: list[int] = []
        source = open_source(video.uri)
        chunk = 1 if options.realtime else max(1, options.chunk)
        height, width = self.size
        frames = np.empty((chunk, height, width), np.uint8)
        stamps = np.empty(chunk, np.float64)
        cues = np.empty(chunk, np.float64)
        rows = cue_height(options.scorer.mode, self.model.card.calibration)
        cue = None if rows is None else MotionCue(rows)
        preview: PreviewWriter | None = None
        previous: np.ndarray | None = None  # prediction of the next frame to come
        seq = 0
        open_episode: EpisodeRecord | None = None
        started = time.perf_counter()

        def label_of(s: int) -> int | None:
            if video.labels is not None:
                return int(video.labels[s]) if s < len(video.labels) else None
            return synthetic_labels[s] if s < len(synthetic_labels) else None

        def flush(count: int) -> None:
            nonlocal previous, open_episode
            first = seq - count
            seqs = range(first, seq)
            chunk_result = feed_chunk(engine, self.stepper, camera, frames[:count],
                                      seqs, stamps[:count], cues[:count])
            if chunk_result.reset:
                result.state_resets += 1
            scores_by_seq: dict[int, list[Message]] = {}
            for message in chunk_result.messages:
                if isinstance(message, Score):
                    writer.write(video.name, message, label_of(message.seq))
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
            predictions = chunk_result.predictions
            if preview is not None:
                score_of = {m.seq: m.score for ms in scores_by_seq.values() for m in ms
                            if isinstance(m, Score)}
                for i in range(count):
                    preview.write(frames[i], previous, first + i, score_of.get(first + i))
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
        with source:
            fps = source.nominal_fps or FALLBACK_FPS
            if options.preview:
                preview = PreviewWriter(options.out / f"{video.camera}.mp4", self.size, fps)
            pacer = None
            if options.realtime and not isinstance(source, SyntheticSource):
                from forecaster.capture import RateLimiter

                pacer = RateLimiter(fps)
            bar = tqdm(total=video.expected_frames, desc=video.name, unit="frame",
                       file=sys.stderr, disable=None if options.progress else True,
                       leave=False, mininterval=0.5)
            try:
                pending = 0
                for image, ts, value, label in _frames(source, self.size, cue):
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
            log.warning("%s", cam.fit.message(f"video {video.name}", str(self.model.path)))
        if self.publisher is not None:
            end = engine.end_of_stream(camera)  # as the daemon: an open episode ends first
            if end is not None:
                self.publisher.send(end)
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
    return files + [folder / f"{camera}.mp4" for camera in cameras if camera_id(camera) == camera]


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
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
    publisher: Any = None,
    force: bool = False,
) -> dict[str, Any]:
    """Replay ``sources`` and write scores.csv, summary.json, timeline.png (and previews).

    ``out`` defaults to a fresh folder ``<cache>/replay/<date>-<time>``
    (:mod:`forecaster.outputs`); an ``out`` holding an earlier replay's results is refused
    unless ``force``, which removes them first.

    Inputs, labels and the model card are checked before TensorFlow is loaded. With
    ``publish`` a :class:`~forecaster.publisher.Publisher` is bound on ``endpoint`` (else the
    config's ``publish.endpoint``) before the model loads, so subscribers started first have
    joined when the first frame is published; ``publisher`` passes one in instead.
    Returns the summary.
    """
    if chunk < 1:
        raise DataError(f"chunk must be at least 1 frame, got {chunk}")
    cfg = config if config is not None else Config()
    videos = plan(sources, labels, realtime=realtime)
    path = model_path(model, config)
    card = check_model(path, cfg.scorer)
    if out is None:
        out_dir = fresh_dir("replay")
    else:
        out_dir = Path(out)
        prepare_out_dir(out_dir, earlier_results(out_dir), force=force)
    own_publisher = None
    if publish and publisher is None:
        from forecaster.publisher import Publisher

        own_publisher = publisher = Publisher(
            endpoint or cfg.publish.endpoint,
            sndhwm=max(cfg.publish.sndhwm, REPLAY_SNDHWM),
            linger_ms=max(cfg.publish.linger_ms, 2000),
        )
    try:
        loaded = load(path)
        options = ReplayOptions(out=out_dir, scorer=cfg.scorer, chunk=chunk, realtime=realtime,
                                preview=preview, progress=progress)
        replayer = Replayer(loaded, options, publisher)
        with_labels = any(v.labels is not None for v in videos) or any(
            v.uri.lower().startswith(SYNTHETIC_PREFIX) for v in videos)
        writer = ScoresWriter(out_dir / "scores.csv", with_labels)
        results = []
        try:
            for video in videos:
                result = replayer.run_video(video, writer)
                results.append(result)
                log.info("%s: %d frames, %d scored, %.0f frames/s", video.name, result.frames,
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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def plot_replay(path: Path, results: Sequence[VideoResult], threshold_on: float) -> Path:
    """timeline.png: one panel per video (the first MAX_PANELS videos)."""
    from forecaster.report import Series, TimelinePanel, plot_timelines

    panels = []
    title = ""
    if len(results) > MAX_PANELS:
        title = f"first {MAX_PANELS} of {len(results)} videos (all are in scores.csv)"
    for r in results[:MAX_PANELS]:
        auc, _ = r.auc()
        title = f"{r.name}: {r.frames} frames, {_count(len(r.events), 'event')}"
        if auc is not None:
            title += f", AUC {auc:.3f}"
        panels.append(TimelinePanel(
            title=title,
            series=[Series("score", np.asarray(r.seqs), np.asarray(r.scores))],
            truth=None if r.labels is None else np.asarray(r.labels),
            threshold=threshold_on,
            threshold_name="threshold_on",
            events=[(e.start_seq, e.end_seq) for e in r.events],
        ))
    return plot_timelines(path, panels, title=title)
