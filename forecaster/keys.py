"""CURVE key pairs for the publisher and its subscribers (``forecaster keys``).

Keys are written as ZeroMQ certificate files, the format ``zmq.auth.create_certificates``
writes and ``zmq.auth.load_certificate`` reads: ``NAME.key`` holds the public key (give it
away), ``NAME.key_secret`` both keys (mode 0600, keep it where it is). The publisher reads
its own ``.key_secret`` and a folder of the ``.key`` files of the clients it accepts.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from forecaster.errors import ConfigError

log = logging.getLogger("forecaster.keys")

_HEADER = """#   ****  Generated on {date} by forecaster keys  ****
#   ZeroMQ CURVE {kind} Certificate
#   {advice}

metadata
    name = "{name}"
curve
    public-key = "{public}"
"""


@dataclass(frozen=True, slots=True)
class KeyFiles:
    public: Path
    secret: Path


def _write(path: Path, text: str, mode: int, force: bool) -> None:
    """Write ``text`` to ``path`` with ``mode``, never through a symbolic link.

    A new file is created with O_EXCL, which fails on any existing name, a link included.
    With ``force`` the text goes to a temporary file in the same folder that is then
    renamed over ``path``: a rename replaces a link at ``path`` itself, not its target.
    """
    temporary: str | None = None
    try:
        if force:
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"key file already exists: {path} (use --force to replace it)") from None
    except OSError as error:
        raise ConfigError(f"cannot write key file {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask filters O_CREAT's mode
            handle.write(text)
        if temporary is not None:
            os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"cannot write key file {path}: {error.strerror}") from None


def warn_if_readable_by_others(path: str | Path) -> None:
    """Log a warning when the secret key file ``path`` is readable by group or others."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o044:
        log.warning("secret key file %s is readable by group or others (mode %04o): "
                    "chmod 600 it", path, mode)


def generate_keypair(folder: str | Path, name: str = "server", force: bool = False) -> KeyFiles:
    """Write ``folder/name.key`` (0644) and ``folder/name.key_secret`` (0600)."""
    import zmq

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name must be a plain file name, got {name!r}")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise ConfigError(f"cannot create key folder {folder}: {error.strerror}") from None
    public, secret = zmq.curve_keypair()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    fields = {"date": date, "name": name, "public": public.decode("ascii")}
    files = KeyFiles(folder / f"{name}.key", folder / f"{name}.key_secret")
    public_text = _HEADER.format(
        kind="**Public**", advice="Exchange securely, or use a secure mechanism to verify "
        "the contents of this file after exchange.", **fields
    )
    secret_text = _HEADER.format(
        kind="**Secret**", advice="DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its "
        "permissions.", **fields
    ) + f'    secret-key = "{secret.decode("ascii")}"\n'
    _write(files.secret, secret_text, 0o600, force)
    _write(files.public, public_text, 0o644, force)
    return files


def _load_certificate(path: str | Path, what: str) -> tuple[bytes | None, bytes | None]:
    """(public, secret) as in a ZeroMQ certificate file; ValueError naming the file."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} key file not found: {path}")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"not a ZeroMQ certificate file: {path}: {error}") from None


def load_secret_key(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) of a ``.key_secret`` file; ValueError naming the file otherwise."""
    public, secret = _load_certificate(path, "secret")
    if not secret or not public:
        raise ValueError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file; ValueError naming the file."""
    public, _ = _load_certificate(path, "public")
    if not public:
        raise ValueError(f"{path} holds no public key")
    return public
