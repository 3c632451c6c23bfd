"""Training: frames -> next frames, then calibration on held-out normal videos.

The model learns to predict the frame after each input frame (or after each window), in
one of two modes (:mod:`forecaster.model.fitting`): shuffled windows, or whole videos side
by side in consecutive chunks with the recurrent state carried (truncated BPTT).
Validation holds out whole videos (or the tail of a single video). After training, the
runner runs over the held-out videos frame by frame, as the daemon does, and the spread
of ``ln(mse)`` on normal frames becomes the model's calibration
(:mod:`forecaster.offline.calibrate`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import keras
import numpy as np

from forecaster.detection.fused import DEFAULT_FUSED
from forecaster.errors import DataError, UsageError
from forecaster.model import (
    DEFAULT_ARCH,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_PATIENCE,
    DEFAULT_WINDOW,
    TRAINING_MODES,
)
from forecaster.model.artifact import ModelCard, current_versions, save_model
from forecaster.model.batches import StatefulGroups, WindowBatches
from forecaster.model.builders import SPECS, build_model, check_size, get_spec
from forecaster.model.fitting import (
    DEFAULT_RECURRENT_MODE,
    FitOptions,
    Mode,
    fit,
    set_determinism,
)

# gradient_difference, l1_gdl and mse are re-exported for existing imports
from forecaster.model.losses import (  # noqa: F401
    LOSSES,
    PixelLoss,
    gradient_difference,
    l1_gdl,
    mse,
)
from forecaster.model.step import make_runner

# the data and calibration names are re-exported for existing imports
from forecaster.offline.calibrate import (  # noqa: F401
    Video,
    calibrate,
    error_ratio,
    load_videos,
    ratio_report,
    recalibrate,
    split_videos,
)
from forecaster.offline.outputs import check_writable_file, training_dir

if TYPE_CHECKING:
    from forecaster.model.distributed import Distribution

log = logging.getLogger("forecaster.train")


# --- the command -----------------------------------------------------------------------------


def default_mode(arch: str) -> str:
    """The training mode used when none is given: recurrent archs train in
    :data:`~forecaster.model.fitting.DEFAULT_RECURRENT_MODE`, clip archs on windows."""
    return DEFAULT_RECURRENT_MODE if get_spec(arch).recurrent else "window"


@dataclass(frozen=True)
class TrainSettings:
    """How ``forecaster train`` trains: everything but the data and the output file.

    ``mode``: ``"window"`` (shuffled clips) or ``"stateful"`` (videos side by side in
    consecutive chunks, state carried, reset per group; recurrent archs only); default
    :func:`default_mode`. In window mode, archs that predict at every step train on clips
    of ``clip`` frames (default ``2 * window``), the others on ``window`` frames -> the next
    frame; ``stride``: frames between the starts of consecutive clips (default half a
    clip). In stateful mode, each batch is ``clip`` (default ``window``) consecutive frames
    of every video of the group. ``loss``: ``"mse"`` or ``"l1+gdl"`` (default: the arch's;
    VAEs add their KL term). Validation holds out ``val_fraction`` of the videos (or the
    tail of a single video); training stops early when the validation loss has not
    improved for ``patience`` epochs, keeping the best weights. A checkpoint is written
    after every epoch to ``checkpoint_dir`` (default: :func:`~forecaster.offline.outputs.training_dir`,
    ``<cache>/train/<absolute out without .keras>.checkpoints``), TensorBoard logs to
    ``tensorboard`` (default: the same with ``.logs``); ``resume`` continues from
    the checkpoint. ``deterministic``: same seed, same weights (on CPU). ``max_frames``
    and ``record_minutes`` bound what is read of each video (the minutes: of a camera or
    stream, recorded that long). ``distributed``: train under ``tf.distribute``
    (:mod:`forecaster.model.distributed`: the local GPUs, or the workers of ``TF_CONFIG``).
    """

    arch: str = DEFAULT_ARCH
    mode: str | None = None
    epochs: int = DEFAULT_EPOCHS
    max_frames: int | None = None
    record_minutes: float | None = None
    size: tuple[int, int] = (64, 64)
    batch_size: int = 8
    seed: int = 0
    window: int = DEFAULT_WINDOW
    clip: int | None = None
    val_fraction: float = 0.2
    stride: int | None = None
    loss: str | None = None
    learning_rate: float = DEFAULT_LEARNING_RATE
    patience: int = DEFAULT_PATIENCE
    checkpoint_dir: str | Path | None = None
    tensorboard: str | Path | None = None
    resume: bool = False
    deterministic: bool = True
    progress: bool = True
    distributed: bool = False

    def resolved(self) -> TrainSettings:
        """These settings checked (UsageError with the reason), with what defaults to the
        arch's filled in: ``mode``, ``loss``, ``clip`` (the frames of a clip or chunk) and,
        in window mode, ``stride``."""
        arch, window, clip, stride = self.arch, self.window, self.clip, self.stride
        spec = get_spec(arch)
        check_size(*self.size)
        mode = self.mode or default_mode(arch)
        if mode not in TRAINING_MODES:
            raise UsageError(f"unknown training mode {mode!r} (known: {', '.join(TRAINING_MODES)})")
        if mode == "stateful" and not spec.recurrent:
            stateful = ", ".join(name for name, s in SPECS.items() if s.recurrent)
            raise UsageError(
                f"--mode stateful needs a recurrent architecture ({stateful}); {arch} is a clip "
                f"model (it sees a whole window at once, there is no state to carry): use "
                f"--mode window"
            )
        loss = self.loss or spec.default_loss
        if loss not in LOSSES:
            raise UsageError(f"unknown loss {loss!r} (known: {', '.join(LOSSES)})")
        if window < 2:
            raise UsageError(f"window must be at least 2, got {window}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size),
                            ("patience", self.patience)):
            if value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if mode == "stateful":
            if stride is not None:
                raise UsageError(
                    "--stride applies to --mode window (stateful mode reads every frame once)")
            length = clip or window  # frames per chunk
        elif spec.output == "next":
            if clip is not None and clip != window:
                raise UsageError(f"{arch} trains on windows of {window} frames; clip does not apply")
            length = window
        else:
            length = clip or 2 * window
        if length < 2:
            raise UsageError(f"clip must be at least 2, got {length}")
        if stride is not None and stride < 1:
            raise UsageError(f"stride must be at least 1, got {stride}")
        if mode == "window":
            stride = stride or max(1, length // 2)
        if self.record_minutes is not None and not self.record_minutes > 0:
            raise UsageError(f"--minutes must be above 0, got {self.record_minutes}")
        if self.distributed and self.resume:
            raise UsageError("--resume does not apply to --distributed training (its "
                             "checkpoints are the chief's alone); train without --resume")
        return replace(self, mode=mode, loss=loss, clip=length, stride=stride)


def train_command(
    data: Sequence[str], out: str | Path, settings: TrainSettings = TrainSettings(),
    distribution: Distribution | None = None,
) -> Path | None:
    """Train a model on ``data`` as ``settings`` say, calibrate it, and write it to ``out``
    (its card's ``training``: the settings, resolved, and what the run measured).

    ``distribution``: the ``tf.distribute`` strategy to train under (default, with
    ``settings.distributed``: :func:`~forecaster.model.distributed.make_distribution`'s,
    made before TensorFlow runs any op). A worker that is not the chief writes nothing
    and returns None."""
    started = time.perf_counter()
    out = Path(out)
    if out.suffix != ".keras":
        raise UsageError(f"model file name must end in .keras, got {out}")
    check_writable_file(out, "model file (--out)")  # before training, not after
    settings = settings.resolved()
    arch, mode, window, length, stride = (settings.arch, settings.mode, settings.window,
                                          settings.clip, settings.stride)
    assert mode is not None and settings.loss is not None and length is not None
    loss, batch_size, seed = settings.loss, settings.batch_size, settings.seed
    spec = get_spec(arch)
    height, width = settings.size
    checkpoints = (Path(settings.checkpoint_dir) if settings.checkpoint_dir
                   else training_dir(out, ".checkpoints"))
    log_dir: Path | None = (Path(settings.tensorboard) if settings.tensorboard
                            else training_dir(out, ".logs"))
    if settings.distributed and distribution is None:
        from forecaster.model.distributed import make_distribution

        distribution = make_distribution()
    if distribution is not None:
        from forecaster.model.distributed import worker_folders

        checkpoints, log_dir = worker_folders(distribution, checkpoints, log_dir)
    log.info("checkpoints in %s, TensorBoard logs in %s", checkpoints, log_dir)

    set_determinism(seed, settings.deterministic)
    minutes = settings.record_minutes
    videos = load_videos(data, settings.size, settings.max_frames,
                         None if minutes is None else minutes * 60.0)
    train_videos, val_videos = split_videos(videos, settings.val_fraction, length, seed)
    if mode == "stateful":
        train_data: WindowBatches | StatefulGroups = StatefulGroups(
            [v.frames for v in train_videos], batch_size, length
        )
        val_data: WindowBatches | StatefulGroups = StatefulGroups(
            [v.frames for v in val_videos], batch_size, length
        )
        samples, val_samples = train_data.num_chunks, val_data.num_chunks
        unit = "chunks"
    else:
        assert stride is not None
        target: Literal["sequence", "next"] = "next" if spec.output == "next" else "sequence"
        train_data = WindowBatches([v.frames for v in train_videos], length, batch_size,
                                   stride=stride, shuffle=True, seed=seed, target=target)
        val_data = WindowBatches([v.frames for v in val_videos], length, batch_size,
                                 stride=length, shuffle=False, seed=seed, target=target)
        samples, val_samples = len(train_data.starts), len(val_data.starts)
        unit = "clips"
    if samples == 0 or val_samples == 0:
        raise DataError(
            f"not enough frames for {unit} of {length} frames: "
            f"{samples} training and {val_samples} validation {unit}"
        )
    log.info(
        "training %s (%s mode) on %d videos (%d %s of %d frames), validating on %d videos "
        "(%d %s)", arch, mode, len(train_videos), samples, unit, length, len(val_videos),
        val_samples, unit,
    )

    scale = float(height * width) if spec.loss_per_pixel_sum else 1.0
    with (distribution.strategy.scope() if distribution else contextlib.nullcontext()):
        model = build_model(arch, height, width, window)
        model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                      loss=PixelLoss(loss, scale))
    signature = {"arch": arch, "size": [height, width], "window": window, "mode": mode,
                 "length": length, "stride": stride, "batch_size": batch_size, "loss": loss}
    options = FitOptions(mode=cast(Mode, mode), epochs=settings.epochs,
                         patience=settings.patience, checkpoint_dir=checkpoints,
                         log_dir=log_dir, resume=settings.resume, progress=settings.progress,
                         signature=signature)
    model, result = fit(model, options, train=train_data, val=val_data,
                        distribution=distribution)
    fit_seconds = time.perf_counter() - started
    if distribution is not None:
        from forecaster.model.distributed import finish_worker

        model = finish_worker(distribution, model, arch, height, width, window)
        if model is None:
            return None

    runner = make_runner(model)
    # motion energy does not depend on the model: its statistics may use every video; the
    # normal motion per place is learned from the training videos and calibrated on the others
    calibration = calibrate(runner, val_videos, window, motion_videos=videos,
                            fused=DEFAULT_FUSED, place_videos=train_videos)
    log.info(
        "calibration: ln(mse) %.3f +- %.3f over %d frames (mse %.3g, copy-last-frame mse %.3g)",
        calibration["log_mse_mean"],
        calibration["log_mse_std"],
        calibration["frames"],
        calibration["mse_mean"],
        calibration["copy_last_mse_mean"],
    )
    line, warning = ratio_report(calibration)
    log.info("%s", line)
    if warning:
        log.warning("%s", warning)
    history = result.history
    train_seconds = [e["train_seconds"] for e in history if "train_seconds" in e]
    training = {
        **asdict(settings),
        "data": list(data),
        "train_videos": [v.name for v in train_videos],
        "val_videos": [v.name for v in val_videos],
        "videos": len(videos),
        "frames": int(sum(len(v.frames) for v in videos)),
        "train_frames": int(sum(len(v.frames) for v in train_videos)),
        "val_frames": int(sum(len(v.frames) for v in val_videos)),
        "clips" if mode == "window" else "chunks": samples,
        "clip" if mode == "window" else "chunk": length,
        "batch_size": getattr(train_data, "batch", batch_size),
        "frames_per_epoch": result.train_frames_per_epoch,
        "epochs_run": len(history),
        "resumed_from_epoch": result.resumed_from,
        "stopped_early": result.stopped_early,
        "loss_scale": scale,
        "kl_term": spec.loss_per_pixel_sum,
        "final_loss": history[-1].get("loss") if history else None,
        "final_val_loss": history[-1].get("val_loss") if history else None,
        "best_val_loss": result.best_val_loss,  # the weights kept
        "best_epoch": result.best_epoch,
        "train_seconds_per_epoch": round(float(np.mean(train_seconds)), 2) if train_seconds else None,
        "frames_per_s": round(result.train_frames_per_epoch / float(np.mean(train_seconds)), 1)
        if train_seconds else None,
        "fit_seconds": round(fit_seconds, 1),
        "duration_s": round(time.perf_counter() - started, 1),
        "params": int(model.count_params()),
        "checkpoint_dir": str(checkpoints),
        "tensorboard": str(log_dir),
        **({"distribution": distribution.card()} if distribution else {}),
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
