"""The pieces every configuration section shares: the strict base model, the float type
and the checks of paths and addresses."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _int_to_float(value: Any) -> Any:
    """TOML ``5`` where a float is expected is 5.0 (strict mode would reject it); a bool
    stays a bool, and is rejected."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: a float setting that also accepts a whole number; never NaN or infinite
Float = Annotated[float, BeforeValidator(_int_to_float), Field(allow_inf_nan=False)]
#: the largest value a libzmq int option (sndhwm, linger) takes
INT32_MAX = 2**31 - 1


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)



def check_path(value: str) -> str:
    """``value`` when it can name a file or folder: no NUL, and a ``~user`` that exists;
    ValueError otherwise."""
    if "\0" in value:
        raise ValueError("a path cannot hold a NUL character")
    try:
        Path(value).expanduser()
    except RuntimeError:
        raise ValueError(f"{value.split('/', 1)[0]}: no such user (or no home folder)") from None
    return value


def check_ip_address(key: str, value: str) -> str:
    """``value`` when it is an IP address; ValueError naming ``key`` otherwise."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{key} must be an IP address, e.g. 127.0.0.1 or ::1") from None
    return value

