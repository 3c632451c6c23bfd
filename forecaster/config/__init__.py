"""Typed configuration, validated once at load.

Lookup order for ``forecaster run``: ``--config PATH``, else ``./config.toml``, else
``/etc/forecaster/config.toml``, else the built-in defaults (the synthetic scene and the
bundled model). Unknown keys and wrong types are rejected with the key path and the value.
"""

from __future__ import annotations

import reprlib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from forecaster.config.base import INT32_MAX, Float, Section, check_ip_address, check_path
from forecaster.config.mqtt import MqttConfig
from forecaster.config.outputs import (
    MIN_TOKEN_CHARS,
    MetricsConfig,
    RecordingConfig,
    WebConfig,
    read_token,
)
from forecaster.endpoints import check_bind_endpoint, parse_endpoint
from forecaster.errors import ConfigError
from forecaster.protocol import MAX_CAMERA_ID, is_camera_id
from forecaster.sources.files import special_file
from forecaster.sources.frame_size import frame_size_fits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

#: the longest display name of a camera
MAX_CAMERA_NAME = 80
DEFAULT_LOOKUP = (Path("config.toml"), Path("/etc/forecaster/config.toml"))

__all__ = [
    "DEFAULT_LOOKUP",
    "INT32_MAX",
    "MIN_TOKEN_CHARS",
    "CameraConfig",
    "CaptureConfig",
    "Config",
    "Float",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "PublishConfig",
    "RecordingConfig",
    "ScorerConfig",
    "Section",
    "ServiceConfig",
    "WebConfig",
    "WorkerConfig",
    "check_ip_address",
    "check_path",
    "find_config",
    "load_config",
    "parse_config",
    "read_token",
    "read_toml",
    "tomllib",
    "with_endpoint",
    "with_source",
]


#: the camera of a config without ``[[cameras]]``: the built-in scene with about one
#: injected anomaly a minute (the scene's own default, 0.01, gives about ten)
DEFAULT_SOURCE = "synthetic:?anomaly_rate=0.0007"


class CameraConfig(Section):
    """One camera: an id (used in topics) and a source string."""

    id: str = "cam0"
    #: the name the live page shows (the id stays the key); "" = the id
    name: str = ""
    source: str = DEFAULT_SOURCE
    #: rate limit in frames per second; 0 = no limit
    fps: Annotated[Float, Field(ge=0, le=1000)] = 0.0
    #: video files and image folders start again at the end instead of ending the stream
    loop: bool = False
    #: a lower-resolution stream of the same camera (an IP camera's substream): the model
    #: and the motion cue run on it, clips record from ``source`` at its own size;
    #: "" = none (everything from ``source``)
    detect_source: str = ""

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not is_camera_id(value) or len(value) > MAX_CAMERA_ID:
            raise ValueError(f"camera id must be 1-{MAX_CAMERA_ID} characters of A-Z a-z 0-9 _ . -, "
                             f"and not '.' or '..' alone")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        value = value.strip()
        if len(value) > MAX_CAMERA_NAME or not value.isprintable():
            raise ValueError(f"camera name must be at most {MAX_CAMERA_NAME} printable "
                             f"characters")
        return value


class CaptureConfig(Section):
    #: frame size (height, width) fed to the model; must match the model's input;
    #: None (not set): the model's own size, from its card
    size: tuple[int, int] | None = None
    #: frames kept in each camera's shared-memory ring
    ring_frames: Annotated[int, Field(ge=2, le=64)] = 10
    #: seconds between reconnection attempts of a live source grow up to this cap
    reconnect_max_s: Annotated[Float, Field(gt=0, le=3600)] = 30.0
    #: cameras one capture process runs, one thread each (1 = a process per camera)
    cameras_per_process: Annotated[int, Field(ge=1, le=256)] = 16
    #: niceness added to the capture processes (0-19): above 0, the worker comes first
    #: when the cores are short, and every camera keeps a fair share of what is left
    nice: Annotated[int, Field(ge=0, le=19)] = 10

    @field_validator("size", mode="before")
    @classmethod
    def _size_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return value
        height, width = value
        if not frame_size_fits(height, width):
            raise ValueError("size must be [height, width], each at least 16 and divisible by 4")
        return value


class ModelConfig(Section):
    #: path to a .keras model made by `forecaster train`; empty = the bundled model
    path: str = ""
    #: what runs the worker's one-frame step: "tensorflow", "litert" (LiteRT, the extra
    #: `lean`), "openvino" (OpenVINO, the extra `openvino`), or "auto" (per batch size the
    #: fastest of TensorFlow and the lean runtimes installed that equal it at start-up;
    #: TensorFlow when it sees a GPU)
    runtime: Literal["auto", "tensorflow", "litert", "openvino"] = "auto"

    @field_validator("runtime")
    @classmethod
    def _check_runtime(cls, value: str) -> str:
        from forecaster.model.ticks import LEAN, installed

        if value in LEAN and not installed(value):
            package, extra = LEAN[value][1], LEAN[value][3]
            raise ValueError(
                f"runtime {value!r} needs the package {package}, which is not installed: "
                f"pip install 'forecaster[{extra}]', or set runtime = \"auto\" (TensorFlow "
                f"when no lean runtime is installed)"
            )
        return value


class PublishConfig(Section):
    #: ZeroMQ PUB endpoint: tcp://HOST:PORT (PORT 1-65535) or ipc:///path
    endpoint: str = "tcp://127.0.0.1:5556"
    #: send high-water mark (messages queued per subscriber before dropping)
    sndhwm: Annotated[int, Field(ge=1, le=INT32_MAX)] = 100
    #: milliseconds to flush pending messages on shutdown
    linger_ms: Annotated[int, Field(ge=0, le=60_000)] = 500
    #: seconds between status/<cam> messages
    status_interval_s: Annotated[Float, Field(gt=0, le=3600)] = 5.0

    #: accept a non-loopback tcp endpoint without CURVE (a trusted network only)
    allow_insecure: bool = False
    #: ZeroMQ secret key file of the publisher (``forecaster keys``); "" = no CURVE
    curve_secret_key: str = ""
    #: folder of the public key files of the subscribers allowed to connect
    curve_allowed_clients: str = ""

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        return check_bind_endpoint(value, "endpoint")

    @field_validator("curve_secret_key")
    @classmethod
    def _check_secret_key(cls, value: str) -> str:
        if value:
            from forecaster.keys import load_secret_key

            load_secret_key(value)  # ValueError naming the file when unusable
        return value

    @field_validator("curve_allowed_clients")
    @classmethod
    def _check_clients(cls, value: str) -> str:
        if value and not Path(value).is_dir():
            raise ValueError(f"folder of allowed client public keys not found: {value}")
        return value

    @property
    def curve(self) -> bool:
        return bool(self.curve_secret_key)

    @model_validator(mode="after")
    def _check_security(self) -> PublishConfig:
        if bool(self.curve_secret_key) != bool(self.curve_allowed_clients):
            raise ValueError(
                "CURVE needs both curve_secret_key (the publisher's secret key file) and "
                "curve_allowed_clients (a folder of client public keys); make them with "
                "`forecaster keys`"
            )
        if not self.curve and not self.allow_insecure and not parse_endpoint(self.endpoint).local:
            raise ValueError(
                f"refusing to publish unencrypted on {self.endpoint}, which is not a loopback "
                f"address or an ipc socket file: set curve_secret_key and "
                f"curve_allowed_clients (see `forecaster keys`), use 127.0.0.1 or an "
                f"ipc:///path endpoint, or set allow_insecure = true on a trusted network"
            )
        return self


class ScorerConfig(Section):
    #: how the calibrated score is made: "fused" (the prediction error fused with a motion
    #: cue; needs calibration.fused in the model card), "patch" (each window's error against
    #: that window's normal error; needs calibration.patch), "global" (the whole frame's
    #: mse) or "auto" (fused, else patch, else global, as the model card allows)
    mode: Literal["auto", "global", "patch", "fused"] = "auto"
    #: calibrated score at which a frame counts as anomalous
    threshold_on: Float = 3.0
    #: score under which an anomaly ends (hysteresis; <= threshold_on)
    threshold_off: Float = 2.0
    #: consecutive frames over threshold_on before an event starts
    min_on_frames: Annotated[int, Field(ge=1)] = 2
    #: consecutive frames under threshold_off before an event ends
    min_off_frames: Annotated[int, Field(ge=1)] = 5
    #: rate of online adaptation of the calibration to the scene (0 = fixed)
    adapt_rate: Annotated[Float, Field(ge=0, lt=1)] = 0.0
    #: seconds an event that has settled (min_off_frames under threshold_off) stays open
    #: for a new start: events closer than this merge into one (0 = never merged)
    merge_gap_s: Annotated[Float, Field(ge=0, le=3600)] = 3.0


    @model_validator(mode="after")
    def _check_order(self) -> ScorerConfig:
        if self.threshold_off > self.threshold_on:
            raise ValueError(
                f"threshold_off ({self.threshold_off}) must not exceed threshold_on "
                f"({self.threshold_on})"
            )
        return self


class WorkerConfig(Section):
    #: seconds the daemon waits for capture and worker to report ready
    startup_timeout_s: Annotated[Float, Field(gt=0, le=3600)] = 120.0
    #: seconds added to startup_timeout_s per camera (all processes start at once)
    startup_per_camera_s: Annotated[Float, Field(ge=0, le=60)] = 1.0
    #: extra delay per tick in milliseconds, to emulate slow hardware (0 in production)
    throttle_ms: Annotated[Float, Field(ge=0, le=10_000)] = 0.0
    #: a camera whose frames come faster than one model call each has its new frames held
    #: up to this many milliseconds, to run them as one chunk of half a ring; 0 = never held
    batch_wait_ms: Annotated[Float, Field(ge=0, le=1000)] = 0.0


class ServiceConfig(Section):
    #: crashed capture or worker processes restarted within restart_window_s; one more
    #: and the daemon exits with code 1 (systemd then restarts the whole service)
    max_restarts: Annotated[int, Field(ge=0)] = 5
    #: seconds over which max_restarts is counted
    restart_window_s: Annotated[Float, Field(gt=0, le=86_400)] = 60.0
    #: a capture or worker loop that makes no progress this long is stalled
    stall_timeout_s: Annotated[Float, Field(gt=0, le=3600)] = 20.0
    #: seconds between the log's progress lines (one per camera: fps, last score, events,
    #: drops); 0 = none
    progress_log_s: Annotated[Float, Field(ge=0, le=86_400)] = 60.0



class Config(Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    capture: CaptureConfig = CaptureConfig()
    model: ModelConfig = ModelConfig()
    publish: PublishConfig = PublishConfig()
    scorer: ScorerConfig = ScorerConfig()
    worker: WorkerConfig = WorkerConfig()
    service: ServiceConfig = ServiceConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: WebConfig = WebConfig()
    recording: RecordingConfig = RecordingConfig()
    mqtt: MqttConfig = MqttConfig()
    cameras: list[CameraConfig] = Field(default_factory=lambda: [CameraConfig()], min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        ids = [camera.id for camera in self.cameras]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"camera ids must be unique, repeated: {', '.join(duplicates)}")
        return self


#: how a wrong value is shown in an error: a nested or long one is cut short
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 120, 120


def _format_error(error: ValidationError, origin: str) -> str:
    """One line per problem: ``origin: key.path: reason (got VALUE)``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "value_error":  # our own ValueError: its text, not pydantic's prefix
            message = str(item["ctx"]["error"])
        if item["type"] == "extra_forbidden":
            message = "unknown key (remove it or check the spelling)"
        if item["type"] == "missing":
            message = "required key is missing"
        secret = item["loc"][-1:] == ("password",)  # never shown
        if secret:
            message = "not accepted: write the password in a file and set password_file"
        shown = ("" if item["type"] == "missing" or secret
                 else f" (got {_SHORT.repr(item['input'])})")
        lines.append(f"{origin}: {path}: {message}{shown}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any], origin: str = "config") -> Config:
    """Validate a mapping (e.g. parsed TOML) into a Config; ConfigError on any problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error, origin)) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a config file; ConfigError naming the file on any problem."""
    path = Path(path)
    special = special_file(path)
    if special is not None:
        raise ConfigError(f"config file {path} is {special}, not a file")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; ConfigError naming the file on any problem."""
    return parse_config(read_toml(path), origin=str(path))


def find_config(explicit: str | None) -> tuple[Config, str]:
    """Return the config to use and where it came from (a path or "built-in defaults")."""
    if explicit is not None:
        return load_config(explicit), explicit
    for candidate in DEFAULT_LOOKUP:
        if candidate.is_file():
            return load_config(candidate), str(candidate)
    return Config(), "built-in defaults"


def with_source(config: Config, source: str) -> Config:
    """Override the source of a one-camera config (``--source``)."""
    if len(config.cameras) != 1:
        ids = ", ".join(c.id for c in config.cameras)
        raise ConfigError(
            f"--source needs a config with exactly one camera, this one has "
            f"{len(config.cameras)} ({ids}); edit the config instead"
        )
    camera = config.cameras[0].model_copy(update={"source": source})
    return config.model_copy(update={"cameras": [camera]})


class _PublishSection(Section):
    publish: PublishConfig


def with_endpoint(config: Config, endpoint: str) -> Config:
    """Override ``publish.endpoint`` (``--endpoint``), checked by the rules of a config file
    (a fixed port, loopback or an ipc socket file unless CURVE or allow_insecure)."""
    data = {"publish": {**config.publish.model_dump(), "endpoint": endpoint}}
    try:
        publish = _PublishSection.model_validate(data).publish
    except ValidationError as error:
        raise ConfigError(_format_error(error, "--endpoint")) from None
    return config.model_copy(update={"publish": publish})
