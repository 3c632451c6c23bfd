"""Training: windows of frames -> next frames, then calibration on held-out normal videos.

The model learns, at every step of a ``window``-frame clip, to predict the following frame.
Validation holds out whole videos (or the tail of a single video). After training, the
stepper runs over the held-out videos frame by frame, carrying its state as the daemon
does, and the spread of ``ln(mse)`` on normal frames becomes the model's calibration.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from forecaster.errors import DataError, UsageError
from forecaster.model import DEFAULT_ARCH, DEFAULT_WINDOW
from forecaster.model.artifact import ModelCard, current_versions, save_model
from forecaster.model.builders import build_model, check_size, get_spec
from forecaster.model.step import Stepper

log = logging.getLogger("forecaster.train")

MSE_FLOOR = 1e-10  # as the scorer: ln(max(mse, 1e-10))


# --- losses ----------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="forecaster")
def gradient_difference(y_true: Any, y_pred: Any) -> Any:
    """Per-sample gradient difference loss: mean | |grad y_true| - |grad y_pred| | over H and W.

    Penalises blur: a prediction with softer edges than the target pays here even when
    its pixel error is small. Tensors are (B, T, H, W, C).
    """
    ops = keras.ops
    dy_true = ops.abs(y_true[:, :, 1:] - y_true[:, :, :-1])
    dy_pred = ops.abs(y_pred[:, :, 1:] - y_pred[:, :, :-1])
    dx_true = ops.abs(y_true[:, :, :, 1:] - y_true[:, :, :, :-1])
    dx_pred = ops.abs(y_pred[:, :, :, 1:] - y_pred[:, :, :, :-1])
    axes = (1, 2, 3, 4)
    return ops.mean(ops.abs(dy_true - dy_pred), axis=axes) + ops.mean(
        ops.abs(dx_true - dx_pred), axis=axes
    )


@keras.saving.register_keras_serializable(package="forecaster")
def l1_gdl(y_true: Any, y_pred: Any) -> Any:
    """Per-sample L1 pixel loss plus gradient difference loss."""
    l1 = keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=(1, 2, 3, 4))
    return l1 + gradient_difference(y_true, y_pred)


@keras.saving.register_keras_serializable(package="forecaster")
def mse(y_true: Any, y_pred: Any) -> Any:
    """Per-sample mean squared error."""
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=(1, 2, 3, 4))


LOSSES: dict[str, Callable[[Any, Any], Any]] = {"l1+gdl": l1_gdl, "mse": mse}


# --- data ------------------------------------------------------------------------------------


@dataclass
class Video:
    """One video's frames (T, H, W) uint8 and per-frame labels (None = all normal)."""

    name: str
    frames: np.ndarray
    labels: np.ndarray | None = None

    def normal(self) -> np.ndarray:
        """Boolean mask of the frames known or assumed normal."""
        if self.labels is None:
            return np.ones(len(self.frames), dtype=bool)
        return np.asarray(self.labels) == 0


def to_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (..., H, W) -> float32 (..., H, W, 1) in [0, 1], as the worker does."""
    out = frames.astype(np.float32)[..., None]
    out *= 1.0 / 255.0
    return out


class ClipBatches(keras.utils.PyDataset):
    """Batches of (frames[s:s+n], frames[s+1:s+n+1]) clips of ``length`` n, reshuffled every epoch."""

    def __init__(
        self,
        videos: Sequence[Video],
        length: int,
        batch_size: int,
        *,
        stride: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.videos = list(videos)
        self.length = length
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        starts = [
            (v, s)
            for v, video in enumerate(self.videos)
            for s in range(0, len(video.frames) - length, stride)
        ]
        self.starts = np.array(starts, dtype=np.int64).reshape(-1, 2)
        self.order = np.arange(len(self.starts))
        if shuffle:
            self.rng.shuffle(self.order)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.starts) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self.starts[self.order[index * self.batch_size : (index + 1) * self.batch_size]]
        clips = np.stack(
            [self.videos[v].frames[s : s + self.length + 1] for v, s in picks]
        )
        clips = to_unit(clips)
        return clips[:, :-1], clips[:, 1:]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)


def load_videos(
    data: Sequence[str], size: tuple[int, int], max_frames: int | None
) -> list[Video]:
    """Read every video named by ``data`` (paths, data sets, synthetic: strings)."""
    from forecaster.datasets import expand_videos, read_video

    videos = []
    for ref in expand_videos(list(data)):
        frames, labels = read_video(ref.uri, size, max_frames)
        log.info("read %s: %d frames", ref.name, len(frames))
        videos.append(Video(ref.name, np.asarray(frames, dtype=np.uint8), labels))
    return videos


def split_videos(
    videos: Sequence[Video], val_fraction: float, clip: int, seed: int
) -> tuple[list[Video], list[Video]]:
    """Hold out whole videos for validation; a single video gives up its tail instead.

    Videos of ``clip`` frames or fewer are left out (too short for one training clip).
    """
    usable = [v for v in videos if len(v.frames) > clip]
    for video in videos:
        if len(video.frames) <= clip:
            log.warning("video %s: %d frames, too short for clips of %d frames; skipped",
                        video.name, len(video.frames), clip)
    if not usable:
        longest = max((len(v.frames) for v in videos), default=0)
        raise DataError(
            f"no video has more than {clip} frames, the training clip length "
            f"(longest has {longest}); use longer videos or a shorter clip"
        )
    if len(usable) == 1:
        video = usable[0]
        cut = round(len(video.frames) * (1.0 - val_fraction))
        cut = min(cut, len(video.frames) - (clip + 1))
        if cut <= clip:
            raise DataError(
                f"video {video.name} has {len(video.frames)} frames: too few to split into "
                f"training and validation clips of {clip} frames"
            )
        labels = video.labels
        train = Video(video.name, video.frames[:cut], None if labels is None else labels[:cut])
        val = Video(
            f"{video.name}[{cut}:]", video.frames[cut:], None if labels is None else labels[cut:]
        )
        return [train], [val]
    order = np.random.default_rng(seed).permutation(len(usable))
    n_val = min(len(usable) - 1, max(1, round(len(usable) * val_fraction)))
    val = [usable[i] for i in sorted(order[:n_val])]
    train = [usable[i] for i in sorted(order[n_val:])]
    return train, val


# --- progress --------------------------------------------------------------------------------


class EpochLog(keras.callbacks.Callback):
    """Logs loss, validation loss and throughput (frames per second) after every epoch."""

    def __init__(self, frames_per_epoch: int, epochs: int) -> None:
        super().__init__()
        self.frames_per_epoch = frames_per_epoch
        self.epochs = epochs
        self.started = 0.0
        self.history: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self.started
        logs = dict(logs or {})
        entry = {k: float(v) for k, v in logs.items()}
        entry["seconds"] = seconds
        self.history.append(entry)
        log.info(
            "epoch %d/%d: loss %.5f val_loss %.5f, %.0f frames/s, %.1f s",
            epoch + 1,
            self.epochs,
            entry.get("loss", math.nan),
            entry.get("val_loss", math.nan),
            self.frames_per_epoch / max(seconds, 1e-9),
            seconds,
        )


# --- calibration -----------------------------------------------------------------------------


def frame_errors(stepper: Stepper, video: Video) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mse of the stepper's prediction (made at t-1) vs frame t, for t >= 1.

    Runs one frame per call with the state carried, as the daemon does. Also returns the
    mse of the trivial forecast "frame t equals frame t-1" for comparison.
    """
    frames = to_unit(video.frames)
    state = stepper.initial_state(1)
    model_mse = np.empty(len(frames) - 1)
    copy_mse = np.empty(len(frames) - 1)
    previous = None
    for t in range(len(frames)):
        actual = frames[t, :, :, 0].astype(np.float64)
        if previous is not None:
            model_mse[t - 1] = np.mean((previous - actual) ** 2)
            copy_mse[t - 1] = np.mean((frames[t - 1, :, :, 0].astype(np.float64) - actual) ** 2)
        prediction, state = stepper.run(frames[None, t : t + 1], state)
        previous = prediction[0, 0, :, :, 0].astype(np.float64)
    return model_mse, copy_mse


def calibrate(stepper: Stepper, videos: Sequence[Video], window: int) -> dict[str, Any]:
    """Mean and spread of ln(mse) over normal frames with at least ``window`` frames of context."""
    logs, models, copies = [], [], []
    for video in videos:
        model_mse, copy_mse = frame_errors(stepper, video)
        # frame t (t >= 1) is predicted from t frames of context; model_mse[t - 1] scores it
        keep = video.normal()[1:].copy()
        keep[: max(window - 1, 0)] = False
        models.append(model_mse[keep])
        copies.append(copy_mse[keep])
        logs.append(np.log(np.maximum(model_mse[keep], MSE_FLOOR)))
    log_mse = np.concatenate(logs) if logs else np.empty(0)
    if len(log_mse) < 2:
        raise DataError(
            f"calibration needs at least 2 normal validation frames after {window} frames of "
            f"context, got {len(log_mse)}; use longer or more videos"
        )
    return {
        "log_mse_mean": float(np.mean(log_mse)),
        "log_mse_std": float(np.std(log_mse, ddof=1)),
        "frames": len(log_mse),
        "mse_mean": float(np.mean(np.concatenate(models))),
        "copy_last_mse_mean": float(np.mean(np.concatenate(copies))),
        "videos": [v.name for v in videos],
    }


# --- the command -----------------------------------------------------------------------------


def train_command(
    data: Sequence[str],
    out: str | Path,
    *,
    arch: str = DEFAULT_ARCH,
    epochs: int = 10,
    max_frames: int | None = None,
    size: tuple[int, int] = (64, 64),
    batch_size: int = 8,
    seed: int = 0,
    window: int = DEFAULT_WINDOW,
    clip: int | None = None,
    val_fraction: float = 0.2,
    stride: int | None = None,
    loss: str = "l1+gdl",
    learning_rate: float = 2e-3,
    patience: int = 3,
    progress: bool = True,
) -> Path:
    """Train ``arch`` on ``data``, calibrate it, and write the model to ``out``.

    ``clip``: frames per training clip (default ``2 * window``): longer than the scoring
    window so the model learns to run with its state carried over many frames, as the
    daemon runs it. ``stride``: frames between the starts of consecutive training clips
    (default ``clip // 2``). Validation holds out ``val_fraction`` of the videos (or the tail of a
    single video); training stops early when the validation loss has not improved for
    ``patience`` epochs, keeping the best weights.
    """
    started = time.perf_counter()
    out = Path(out)
    if out.suffix != ".keras":
        raise UsageError(f"model file name must end in .keras, got {out}")
    get_spec(arch)
    height, width = size
    check_size(height, width)
    if loss not in LOSSES:
        raise UsageError(f"unknown loss {loss!r} (known: {', '.join(LOSSES)})")
    if window < 2:
        raise UsageError(f"window must be at least 2, got {window}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    clip = clip or 2 * window
    if clip < 2:
        raise UsageError(f"clip must be at least 2, got {clip}")
    stride = stride or max(1, clip // 2)

    keras.utils.set_random_seed(seed)
    videos = load_videos(data, size, max_frames)
    train_videos, val_videos = split_videos(videos, val_fraction, clip, seed)
    train_data = ClipBatches(train_videos, clip, batch_size, stride=stride, shuffle=True, seed=seed)
    val_data = ClipBatches(val_videos, clip, batch_size, stride=clip, shuffle=False, seed=seed)
    if len(train_data.starts) == 0 or len(val_data.starts) == 0:
        raise DataError(
            f"not enough frames for clips of {clip} frames: "
            f"{len(train_data.starts)} training and {len(val_data.starts)} validation clips"
        )
    log.info(
        "training %s on %d videos (%d clips), validating on %d videos (%d clips)",
        arch,
        len(train_videos),
        len(train_data.starts),
        len(val_videos),
        len(val_data.starts),
    )

    model = build_model(arch, height, width)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=LOSSES[loss])
    epoch_log = EpochLog(len(train_data.starts) * clip, epochs)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
        epoch_log,
    ]
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        callbacks=callbacks,
        verbose=1 if progress else 0,
    )
    fit_seconds = time.perf_counter() - started

    stepper = Stepper(model)
    calibration = calibrate(stepper, val_videos, window)
    log.info(
        "calibration: ln(mse) %.3f +- %.3f over %d frames (mse %.3g, copy-last-frame mse %.3g)",
        calibration["log_mse_mean"],
        calibration["log_mse_std"],
        calibration["frames"],
        calibration["mse_mean"],
        calibration["copy_last_mse_mean"],
    )
    history = epoch_log.history
    best = min(history, key=lambda e: e.get("val_loss", math.inf)) if history else {}
    training = {
        "data": list(data),
        "train_videos": [v.name for v in train_videos],
        "val_videos": [v.name for v in val_videos],
        "videos": len(videos),
        "frames": int(sum(len(v.frames) for v in videos)),
        "train_frames": int(sum(len(v.frames) for v in train_videos)),
        "val_frames": int(sum(len(v.frames) for v in val_videos)),
        "clips": len(train_data.starts),
        "clip": clip,
        "stride": stride,
        "max_frames": max_frames,
        "epochs": epochs,
        "epochs_run": len(history),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "loss": loss,
        "final_loss": history[-1].get("loss") if history else None,
        "final_val_loss": history[-1].get("val_loss") if history else None,
        "best_val_loss": best.get("val_loss"),  # the weights kept
        "best_epoch": history.index(best) + 1 if history else None,
        "seed": seed,
        "fit_seconds": round(fit_seconds, 1),
        "duration_s": round(time.perf_counter() - started, 1),
        "params": int(model.count_params()),
    }
    card = ModelCard(
        arch=arch,
        height=height,
        width=width,
        window=window,
        calibration=calibration,
        training=training,
        versions=current_versions(),
    )
    save_model(model, out, card)
    log.info("model written to %s (%.1f s)", out, training["duration_s"])
    return out
