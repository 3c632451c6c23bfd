"""What ``run`` checks before it starts anything, and what ``check-config`` checks too.

The model's card against the config, every camera's source, the time the start-up may
take; and the frame rings that killed daemons left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from forecaster.config import Config
from forecaster.detection.engine import check_scorer, model_path
from forecaster.errors import ModelError, SourceError, UsageError, name_some
from forecaster.sources.readers import FileSource, open_source

log = logging.getLogger("forecaster.supervisor")
#: cameras or processes named in one error line before "and N more"
NAMES_SHOWN = 3


def resolve_model_path(config: Config) -> Path:
    """The configured model, or the bundled one; its card checked against the config (frame
    size, the scorer it makes) without importing TensorFlow."""
    from forecaster.model.artifact import read_card

    path = model_path(None, config)
    card = read_card(path)
    if config.capture.size is not None and (card.height, card.width) != config.capture.size:
        raise ModelError(
            f"model {path} expects {card.height}x{card.width} frames, configured "
            f"capture.size is {config.capture.size[0]}x{config.capture.size[1]}; "
            f"set capture.size = [{card.height}, {card.width}] or use a model trained "
            f"at that size"
        )
    check_scorer(path, card, config.scorer)
    return path


def check_sources(config: Config) -> None:
    """Parse every camera's source string before anything is started; open each video file
    (its first frame decoded), so that a corrupt or cut file is named before any port is bound.

    One SourceError: the first failing camera and why, then the others by id (the first
    few, then how many more), so that the line stays short with hundreds of cameras.
    """
    failed: list[tuple[str, UsageError]] = []
    opened: dict[str, UsageError | None] = {}  # one probe per file however many cameras

    def probe(uri: str, loop: bool) -> None:
        source = open_source(uri, loop=loop)
        if isinstance(source, FileSource):
            if source.uri not in opened:
                try:
                    with source:
                        opened[source.uri] = None
                except UsageError as problem:
                    opened[source.uri] = problem
            if (known := opened[source.uri]) is not None:
                raise known

    for camera in config.cameras:
        try:
            probe(camera.source, camera.loop)
            if camera.detect_source:
                try:
                    probe(camera.detect_source, camera.loop)
                except UsageError as detect_problem:
                    raise type(detect_problem)(f"detect_source: {detect_problem}") from None
        except UsageError as problem:
            failed.append((camera.id, problem))
    if not failed:
        return
    first, error = failed[0]
    message = f"camera {first}: {error}"
    if len(failed) > 1:
        others = name_some([camera for camera, _ in failed[1:]], NAMES_SHOWN)
        message = (f"{len(failed)} of {len(config.cameras)} cameras have no usable source: "
                   f"{message}; also {others}")
    raise SourceError(message)


def startup_timeout_s(config: Config) -> float:
    """How long ``run`` waits for every process to be ready: a base and a per-camera
    allowance, since all of them start at once and share the machine's cores."""
    worker = config.worker
    return worker.startup_timeout_s + worker.startup_per_camera_s * len(config.cameras)


def remove_stale_rings(shm_dir: Path = Path("/dev/shm")) -> None:
    """Unlink rings left behind by daemons that were killed (their pid is gone)."""
    if not shm_dir.is_dir():
        return
    for entry in shm_dir.glob("forecaster_*_*"):
        pid_text = entry.name.split("_")[1]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                entry.unlink()
                log.info("removed stale frame ring %s", entry.name)
        except PermissionError:
            continue
