"""The output sections of the configuration: the Prometheus metrics, the live page and
the event recordings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from forecaster.config.base import Float, Section, check_ip_address, check_path
from forecaster.endpoints import is_loopback_host


class MetricsConfig(Section):
    #: serve Prometheus metrics over HTTP
    enabled: bool = False
    #: address to listen on (an IP address; keep it loopback unless the network is trusted)
    address: str = "127.0.0.1"
    #: TCP port to listen on
    port: Annotated[int, Field(ge=1, le=65535)] = 9108
    #: accept a non-loopback address (the metrics have no authentication: a trusted
    #: network only)
    allow_insecure: bool = False

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return check_ip_address("address", value)

    @model_validator(mode="after")
    def _check_security(self) -> MetricsConfig:
        if self.enabled and not self.allow_insecure and not is_loopback_host(self.address):
            raise ValueError(
                f"metrics.address = {self.address!r} is not a loopback address, and the "
                f"metrics have no authentication: use 127.0.0.1 or ::1, or set "
                f"metrics.allow_insecure = true on a trusted network"
            )
        return self


#: shortest access token accepted from ``web.token_file`` (characters)
MIN_TOKEN_CHARS = 16


def read_token(path: str) -> str:
    """The access token in ``path`` (surrounding white space removed); ValueError naming the
    file when it cannot be read or is too short."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"token file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read token file {path}: {error}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(
            f"token file {path} must hold one token of at least {MIN_TOKEN_CHARS} characters "
            f"without spaces (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe())' "
            f"> {path}`)"
        )
    return token


class WebConfig(Section):
    #: serve the live page (``forecaster run``)
    enabled: bool = True
    #: address to listen on (an IP address; keep it loopback unless the network is trusted)
    address: str = "127.0.0.1"
    #: TCP port to listen on
    port: Annotated[int, Field(ge=1, le=65535)] = 8088
    #: accept a non-loopback address (plain HTTP: a trusted network only); needs token_file
    allow_insecure: bool = False
    #: a file holding the access token the page asks for; "" = none (loopback only)
    token_file: str = ""
    #: images (actual, forecast, error) sent per second per camera and viewer, at most
    image_fps: Annotated[Float, Field(gt=0, le=15)] = 5.0

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return check_ip_address("address", value)

    @field_validator("token_file")
    @classmethod
    def _check_token_file(cls, value: str) -> str:
        if value:
            read_token(value)
        return value

    @model_validator(mode="after")
    def _check_security(self) -> WebConfig:
        if not self.enabled or is_loopback_host(self.address):
            return self
        if not self.allow_insecure:
            raise ValueError(
                f"web.address = {self.address!r} is not a loopback address: use 127.0.0.1 or "
                f"::1 (and an SSH tunnel), or set web.allow_insecure = true and "
                f"web.token_file on a trusted network"
            )
        if not self.token_file:
            raise ValueError(
                f"web.address = {self.address!r} is not a loopback address: set "
                f"web.token_file to a file holding an access token"
            )
        return self


#: libx264's presets a clip may be encoded with, fastest first
X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"]


class RecordingConfig(Section):
    """Event clips, snapshots and sidecars (see :mod:`forecaster.recording.recorder`)."""

    #: record a clip, a snapshot and a sidecar of each anomaly event
    enabled: bool = True
    #: folder of the recordings; "" = $STATE_DIRECTORY/events under systemd, else ./events
    dir: str = ""
    #: seconds of video before the event's first frame
    pre_s: Annotated[Float, Field(ge=0, le=60)] = 5.0
    #: seconds of video after the event's last frame
    post_s: Annotated[Float, Field(ge=0, le=60)] = 2.0
    #: a camera's or file's H.264 is copied into its clips as it comes, at its own size: no
    #: frame is encoded (see :mod:`forecaster.recording.packets`); false: every clip is
    #: encoded from the frames, at most ``max_width`` wide
    copy_video: bool = True
    #: clips encoded from frames, and snapshots, are scaled down to at most this width
    #: (pixels)
    max_width: Annotated[int, Field(ge=16, le=7680)] = 640
    #: libx264's preset for the clips: "ultrafast" takes 0.55-0.7x the CPU of "superfast"
    #: per frame for 1.9x the bytes (benchmarks/clip_presets.py); the slower ones make
    #: smaller files for more CPU
    preset: X264Preset = "ultrafast"
    #: JPEG quality of the pre-roll frames and snapshots (1-100)
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 80
    #: memory bound of each camera's pre-roll buffer (MB of JPEG frames, or of a copied
    #: camera's packets)
    preroll_max_mb: Annotated[Float, Field(gt=0, le=4096)] = 32.0
    #: a clip is closed after this many seconds even if its event goes on
    max_clip_s: Annotated[Float, Field(gt=0, le=86_400)] = 600.0
    #: events older than this many days are deleted
    max_age_days: Annotated[Float, Field(gt=0, le=36_500)] = 30.0
    #: the recordings take at most this many MB; the oldest events go first
    max_total_mb: Annotated[Float, Field(gt=0)] = 10_240.0
    #: keep at least this many MB free on the recordings' file system (deleting the oldest
    #: events; an event is not recorded when that is not enough)
    min_free_mb: Annotated[Float, Field(ge=0)] = 1024.0

    @field_validator("dir")
    @classmethod
    def _check_dir(cls, value: str) -> str:
        return check_path(value)
