"""ZeroMQ endpoints and listening addresses: parsed once, judged by one loopback rule.

A listening socket (the publisher, the metrics server) is *local* when only programs on
the same machine can reach it: a tcp endpoint or an address on a loopback interface, or an
``ipc://`` socket file (its folder's permissions apply). An abstract ``ipc://@name``
socket has no file and no permissions: any local user can connect, so it is not local.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from typing import Literal

TCP = "tcp://"
IPC = "ipc://"
MAX_PORT = 65535
#: the longest path of a Unix socket (``sun_path`` holds 108 bytes with its final NUL)
SOCKET_PATH_MAX = 107


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name
        return False


def host_header_is_loopback(value: str | None) -> bool:
    """The rule against DNS rebinding for a server on a loopback address: the request's
    ``Host`` header (``host``, ``host:port``, ``[v6]:port``) names a loopback host.

    A missing or malformed header fails; so does any other name, however it resolves.
    """
    if not value:
        return False
    host, port = value.strip(), ""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        port = rest[1:]
    else:
        name, colon, port = host.partition(":")
        if colon and not port:
            return False
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return False
    return is_loopback_host(name.lower())


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed ``tcp://HOST:PORT`` or ``ipc://PATH`` endpoint."""

    transport: Literal["tcp", "ipc"]
    #: tcp: the host without brackets (an IP address, a host or interface name, ``*``);
    #: ipc: the socket path, or ``@name`` for an abstract socket
    address: str
    #: tcp: the port, None for ``*`` (any free port; 0 means the same); ipc: None
    port: int | None = None

    @property
    def ipv6(self) -> bool:
        """A tcp endpoint on an IPv6 address (written in brackets)."""
        return self.transport == "tcp" and ":" in self.address

    @property
    def abstract(self) -> bool:
        """An ipc endpoint in the abstract namespace (no socket file)."""
        return self.transport == "ipc" and self.address.startswith("@")

    @property
    def local(self) -> bool:
        """Reachable only from this machine (see the module)."""
        if self.transport == "ipc":
            return not self.abstract
        return is_loopback_host(self.address)


def _port(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or int(text) > MAX_PORT:
        raise ValueError(f"port must be a number from 1 to {MAX_PORT}, got {text!r}")
    return int(text)


def parse_endpoint(endpoint: str) -> Endpoint:
    """Parse ``endpoint``; ValueError saying what is wrong with it (the caller names it)."""
    if endpoint != "".join(endpoint.split()):
        raise ValueError("endpoint must not contain spaces")
    if endpoint.startswith(IPC):
        path = endpoint[len(IPC) :]
        if path in ("", "@"):
            raise ValueError("ipc endpoint needs a socket path, e.g. "
                             "ipc:///run/forecaster/forecaster.sock")
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise ValueError(f"ipc socket path is {len(os.fsencode(path))} bytes long; a "
                             f"Unix socket's path holds at most {SOCKET_PATH_MAX}")
        return Endpoint("ipc", path)
    if not endpoint.startswith(TCP):
        raise ValueError("endpoint must start with tcp:// or ipc://")
    rest = endpoint[len(TCP) :]
    if rest.startswith("["):
        host, bracket, port = rest[1:].partition("]")
        if not bracket or not port.startswith(":") or not host:
            raise ValueError("an IPv6 tcp endpoint is tcp://[ADDRESS]:PORT, e.g. tcp://[::1]:5556")
        return Endpoint("tcp", host, _port(port[1:]))
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port:
        raise ValueError("tcp endpoint needs a host and a port, e.g. tcp://127.0.0.1:5556")
    if ":" in host:
        raise ValueError("an IPv6 address goes in brackets, e.g. tcp://[::1]:5556")
    return Endpoint("tcp", host, _port(port))


def check_bind_endpoint(value: str, key: str) -> str:
    """``value`` if it can be bound for subscribers to find: a tcp endpoint with a fixed
    port, an ipc path where nothing but a socket is; ValueError naming ``key`` otherwise
    (run's ``publish.endpoint`` and the relay's ``bind`` share the rule)."""
    endpoint = parse_endpoint(value)
    if endpoint.transport == "tcp" and not endpoint.port:
        raise ValueError(f"{key} needs a fixed port from 1 to 65535, for subscribers to find "
                         f"it (port 0 or * would pick a random one)")
    if endpoint.transport == "ipc" and not endpoint.abstract:
        problem = ipc_path_problem(endpoint.address)
        if problem is not None:
            raise ValueError(problem)
    return value


def ipc_path_problem(path: str) -> str | None:
    """Why binding the ``ipc://`` socket file ``path`` would harm what is there, or None.

    libzmq binds by removing whatever is at the path first, so anything there but a socket
    (a file, a folder, a link) is refused: nothing is lost by a mistyped endpoint.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # nothing there (or a folder on the way is missing: made, or refused, later)
        return None
    if stat.S_ISSOCK(mode):
        return None
    what = ("a folder" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
            else "a file" if stat.S_ISREG(mode) else "not a socket")
    return (f"{path} is {what}, and binding would replace it: name a path where nothing is "
            f"yet (or a socket file this program left)")


#: tcp hosts a bind listens on every address with
_WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::"})


def reaches(connect: str, bind: str) -> bool:
    """Whether connecting to ``connect`` plainly reaches the socket bound on ``bind``: the
    same socket file, or the same port of the same address (or of loopback, when ``bind``
    listens on all). A name or address of this machine that is not loopback is not seen
    here (the relay notices such a loop at run time)."""
    c, b = parse_endpoint(connect), parse_endpoint(bind)
    if c.transport != b.transport:
        return False
    if c.transport == "ipc":
        if c.abstract or b.abstract:
            return c.address == b.address
        return os.path.abspath(c.address) == os.path.abspath(b.address)
    if c.port != b.port:
        return False

    def names(host: str) -> set[str]:
        return {"127.0.0.1", "::1"} if host == "localhost" else {host}

    if b.address in _WILDCARD_HOSTS:  # every address of this machine: loopback plainly
        return is_loopback_host(c.address) or c.address in _WILDCARD_HOSTS
    return bool(names(c.address) & names(b.address))
