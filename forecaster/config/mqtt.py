"""The ``[mqtt]`` section: the bridge to an MQTT broker and Home Assistant's discovery
(see :mod:`forecaster.mqtt`)."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from forecaster.config.base import Float, Section, check_path

#: a topic prefix: MQTT topic levels of letters, digits, ``_`` and ``-``
TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


def read_password(path: str) -> str:
    """The password in ``path`` (its first line, surrounding white space removed);
    ValueError naming the file when it cannot be read or is empty."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"password file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read password file {path}: {error}") from None
    lines = text.splitlines()
    password = lines[0].strip() if lines else ""
    if not password:
        raise ValueError(f"password file {path} is empty: write the password on its first line")
    return password


class MqttConfig(Section):
    """An MQTT broker to publish states, scores, events and snapshots to, with Home
    Assistant's discovery (see docs/home-assistant.md)."""

    #: publish to an MQTT broker
    enabled: bool = False
    #: the broker's host name or IP address
    host: str = "localhost"
    #: the broker's TCP port (8883 is the usual one with TLS)
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    #: connect with TLS
    tls: bool = False
    #: the CA certificates that sign the broker's certificate (PEM); "" = the system's
    ca_file: str = ""
    #: a client certificate (PEM) for brokers that ask for one; "" = none
    cert_file: str = ""
    #: the client certificate's private key (PEM); "" = in cert_file
    key_file: str = ""
    #: the user name to log in with; "" = anonymous
    username: str = ""
    #: a file holding the password on its first line (never the password itself here)
    password_file: str = ""
    #: the first level of every topic the daemon publishes
    topic_prefix: str = "forecaster"
    #: Home Assistant's discovery prefix
    discovery_prefix: str = "homeassistant"
    #: the client id; "" = ``forecaster-<host name>-<topic_prefix>``
    client_id: str = ""
    #: QoS of availability, states, events and snapshots (scores go with QoS 0)
    qos: Annotated[int, Field(ge=0, le=2)] = 1
    #: device class of each camera's anomaly binary_sensor in Home Assistant
    device_class: Literal["motion", "problem"] = "motion"
    #: seconds between two scores of a camera, at least
    score_interval_s: Annotated[Float, Field(ge=1, le=3600)] = 1.0
    #: events (and their snapshots) kept while the broker is away; the oldest go first
    queue_events: Annotated[int, Field(ge=1, le=100_000)] = 100
    #: the live page's address as phones see it, for the links in events;
    #: "" = ``http://<web.address>:<web.port>/``
    page_url: str = ""

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value or any(c.isspace() or c in "/\0" for c in value):
            raise ValueError("must be a host name or an IP address")
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _check_file(cls, value: str) -> str:
        if value:
            check_path(value)
            if not Path(value).expanduser().is_file():
                raise ValueError(f"file not found: {value}")
        return value

    @field_validator("password_file")
    @classmethod
    def _check_password_file(cls, value: str) -> str:
        if value:
            check_path(value)
            read_password(value)
        return value

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not TOPIC_PREFIX.fullmatch(value):
            raise ValueError("must be topic levels of letters, digits, '_' and '-' joined by "
                             "'/', e.g. 'forecaster' or 'site1/forecaster'")
        return value

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str) -> str:
        if len(value.encode("utf-8")) > 128 or "\0" in value:
            raise ValueError("must be at most 128 bytes, without NUL")
        return value

    @field_validator("page_url")
    @classmethod
    def _check_page_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("must start with http:// or https:// and hold no spaces")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> MqttConfig:
        if self.key_file and not self.cert_file:
            raise ValueError("mqtt.key_file is set without mqtt.cert_file")
        if not self.enabled or not self.tls:
            return self
        try:
            context = ssl.create_default_context(cafile=self.ca_file or None)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file or None)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"the TLS files (ca_file {self.ca_file!r}, cert_file "
                             f"{self.cert_file!r}, key_file {self.key_file!r}) cannot be "
                             f"used: {error}") from None
        return self
