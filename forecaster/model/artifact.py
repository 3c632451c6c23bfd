"""The model artifact: one ``.keras`` file with the model card embedded.

The card (``forecaster.json``, an extra member of the ``.keras`` zip) says what the model
is (architecture, frame size, window), how it scores normal footage (calibration) and how
it was made (training data summary, mode, loss, epochs run, stride or chunk, timings,
library versions). ``read_card`` reads it with the
standard library alone, so tools can inspect a model without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forecaster.errors import ModelError

if TYPE_CHECKING:
    import keras

CARD_MEMBER = "forecaster.json"
CARD_FORMAT = 1
CALIBRATION_KEYS = ("log_mse_mean", "log_mse_std", "frames")
#: frames of context a model may need before its predictions are scored
WINDOW_RANGE = (2, 1000)


@dataclass
class ModelCard:
    """What a model is, how it scores normal footage, and how it was made."""

    arch: str
    height: int
    width: int
    window: int
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames the model takes."""
        return self.height, self.width

    def to_json(self) -> str:
        """The card as a JSON document."""
        return json.dumps({"format": CARD_FORMAT, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        """Parse a card; ValueError naming the field that is missing or malformed."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"card must be a JSON object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for name, kind in (("arch", str), ("height", int), ("width", int), ("window", int)):
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"card field {name!r} must be {kind.__name__}, got {value!r}")
            values[name] = value
        low, high = WINDOW_RANGE
        if not low <= values["window"] <= high:
            raise ValueError(f"card field 'window' must be {low} to {high}, got {values['window']}")
        for name in ("calibration", "training", "versions"):
            value = data.get(name, {})
            if not isinstance(value, dict):
                raise ValueError(f"card field {name!r} must be an object, got {value!r}")
            values[name] = value
        return cls(**values)

    def has_calibration(self) -> bool:
        """True when the calibration holds finite statistics with a positive spread."""
        cal = self.calibration
        try:
            mean, std = float(cal["log_mse_mean"]), float(cal["log_mse_std"])
            frames = int(cal["frames"])
        except (KeyError, TypeError, ValueError):
            return False
        return math.isfinite(mean) and math.isfinite(std) and std > 0 and frames > 0


def bundled_model_path() -> Path:
    """The model shipped with the package (forecaster/assets/default.keras)."""
    return Path(__file__).resolve().parents[1] / "assets" / "default.keras"


def current_versions() -> dict[str, str]:
    """Versions of forecaster and the libraries a model is made with."""
    from forecaster import __version__

    versions = {"forecaster": __version__}
    for package in ("keras", "tensorflow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def save_model(model: keras.Model, path: str | Path, card: ModelCard) -> None:
    """Write ``model`` with ``card`` embedded to ``path`` (a ``.keras`` file), atomically.

    The optimizer state is not stored: the artifact is for inference (and fine-tuning
    starts a fresh optimizer).
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"model file name must end in .keras, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        _strip_training_state(model).save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(CARD_MEMBER, card.to_json())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _strip_training_state(model: keras.Model) -> keras.Model:
    """``model`` itself when uncompiled, else a copy with the same layers' weights and no optimizer."""
    if getattr(model, "optimizer", None) is None:
        return model
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def read_card(path: str | Path) -> ModelCard:
    """Read the card of the model at ``path`` from the zip alone (no TensorFlow import).

    Only ``.keras`` files are read: Keras loads a legacy ``.h5``/``.hdf5`` file by another
    code path that its safe mode does not guard, so such a path is refused by its name,
    before anything opens it.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(
            f"model file name must end in .keras, got {path} (legacy .h5/.hdf5 models are "
            f"not loaded: Keras' safe mode does not cover them); use a model made by "
            f"`forecaster train`"
        )
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise ModelError(f"not a Keras model file (no config.json): {path}")
            if CARD_MEMBER not in names:
                raise ModelError(
                    f"model {path} has no {CARD_MEMBER} card; make it with `forecaster train`"
                )
            text = archive.read(CARD_MEMBER)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"not a model file (not a .keras zip): {path}: {exc}") from None
    try:
        return ModelCard.from_json(text)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ModelError(f"model {path} has a malformed {CARD_MEMBER} card: {exc}") from None


def load_model(
    path: str | Path, *, expect_size: tuple[int, int] | None = None
) -> tuple[keras.Model, ModelCard]:
    """Load the model at ``path`` (safe mode, not compiled) and its card.

    ModelError naming the file when it is missing, not a model, has no card, or takes
    frames of another size than ``expect_size`` (height, width).
    """
    path = Path(path)
    card = read_card(path)
    if expect_size is not None and tuple(expect_size) != card.size:
        raise _size_mismatch(path, card.size, expect_size)

    import keras

    from forecaster.model import builders  # registers the custom layers

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises many types for a broken file
        raise ModelError(f"cannot load model {path}: {type(exc).__name__}: {exc}") from None
    try:
        size = builders.frame_size(model)
        arch = builders.arch_of(model)
    except ModelError as exc:
        raise ModelError(f"model {path}: {exc}") from None
    if arch.name != card.arch:
        raise ModelError(f"model {path} is a {arch.name} model but its card says {card.arch}")
    try:
        builders.check_layers(model, arch, card.window)
    except ModelError as exc:
        raise ModelError(f"model {path}: {exc}") from None
    steps = builders.input_frames(model)
    if steps is not None and steps != card.window:
        raise ModelError(
            f"model {path} takes {steps}-frame windows but its card says window={card.window}"
        )
    if size != card.size:
        raise ModelError(
            f"model {path} takes {size[0]}x{size[1]} frames but its card says "
            f"{card.height}x{card.width}"
        )
    if expect_size is not None and tuple(expect_size) != size:
        raise _size_mismatch(path, size, expect_size)
    return model, card


def _size_mismatch(path: Path, size: tuple[int, int], expect: tuple[int, int]) -> ModelError:
    return ModelError(
        f"model {path} expects {size[0]}x{size[1]} frames, "
        f"configured size is {expect[0]}x{expect[1]}"
    )
