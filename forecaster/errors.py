"""The exception hierarchy. Every message names the thing and the value received."""

from __future__ import annotations

from collections.abc import Sequence


class ForecasterError(Exception):
    """Base class of all errors the application raises on purpose."""

    #: process exit code when this error ends a command
    exit_code: int = 1


class UsageError(ForecasterError):
    """Bad input from the user: a config, a path, a source string, a model file."""

    exit_code = 2


class ConfigError(UsageError):
    """A config file that cannot be read or does not validate."""


class SourceError(UsageError):
    """A frame source that cannot be opened or read (missing file, corrupt video...)."""


class ModelError(UsageError):
    """A model artifact that cannot be loaded or does not fit the configured frames."""


class DataError(UsageError):
    """A data set or labels file that is missing, malformed or inconsistent."""


class SourceDisconnected(ForecasterError):
    """A live source (camera, network stream) stopped delivering frames; retry later."""


class ChildFailed(ForecasterError):
    """A supervised process failed to start or died."""


def name_some(names: Sequence[str], shown: int = 3, sep: str = ", ") -> str:
    """``"a, b, c and 9 more"``: a list of names that keeps a one-line message short."""
    if len(names) <= shown + 1:
        return sep.join(names)
    return f"{sep.join(names[:shown])} and {len(names) - shown} more"
