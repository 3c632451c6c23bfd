"""Event recordings, retention and the recording folder attacked as a hostile or careless
user would: files the daemon did not write, links out of the folder, camera ids that name
folders, a disk that fills, a stop under load, paths that cannot be folders."""

from __future__ import annotations

import pytest

from forecaster.config import parse_config
from forecaster.errors import ConfigError
from forecaster.protocol import ProtocolError, camera_safe, parse_topic, validate_camera


@pytest.mark.parametrize("camera", [".", ".."])
def test_dot_camera_ids_are_refused_in_config_and_on_the_wire(camera: str) -> None:
    with pytest.raises(ConfigError, match=r"cameras\.0\.id") as error:
        parse_config({"cameras": [{"id": camera, "source": "synthetic:"}]})
    assert repr(camera) in str(error.value)
    with pytest.raises(ProtocolError, match="invalid camera id"):
        validate_camera(camera)
    with pytest.raises(ProtocolError, match="invalid camera id"):
        parse_topic(f"score/{camera}".encode())
    assert camera_safe(camera) == ""
    # a dot inside an id is still fine
    assert validate_camera("cam.1") == "cam.1" and validate_camera("...") == "..."
