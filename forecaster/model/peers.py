"""Before multi-worker training: wait, for a bounded time, until the cluster's other
workers listen; and keep the training stoppable by SIGINT and SIGTERM.

TensorFlow's own wait for the workers has no time limit and holds the interpreter, so no
signal handler runs during it. Two guards come first:

- :func:`wait_for_peers` tries TCP connections to every other worker until all answer or
  a deadline passes, while listening on this worker's port so that the others see it;
- :func:`run_stoppable` runs the training in a forked child and stays in Python itself: on
  SIGINT or SIGTERM it kills the child and exits with one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from forecaster.errors import ForecasterError, UsageError, name_some

log = logging.getLogger("forecaster.train")

#: seconds between two rounds of connection tries
POLL_S = 0.5
#: how long the listener stays open after every peer answered (a peer tries every
#: POLL_S, and a connection attempt takes at most 1 s)
LINGER_S = 2 * POLL_S + 1.0
#: the signals that stop a worker
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PeersMissing(ForecasterError):
    """Some workers of the cluster did not listen before the deadline."""


class Stopped(ForecasterError):
    """A stop signal arrived."""

    def __init__(self, signum: int, what: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} {what}")
        self.exit_code = 128 + signum


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); the address is checked already."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Within: SIGINT and SIGTERM are noted in the list yielded (the caller checks it;
    an exception raised by the handler could land anywhere, in a log call too)."""
    received: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    saved = {signum: signal.signal(signum, note) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _listen(port: int) -> socket.socket:
    """A placeholder listener on this worker's port (all interfaces) while it waits."""
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6,
                                        dualstack_ipv6=True, reuse_port=False)
        return socket.create_server(("", port))
    except OSError as error:
        raise UsageError(f"TF_CONFIG: this worker's port {port} cannot be listened on "
                         f"({error.strerror or error}); is another program using it?") from None


def _drain(listener: socket.socket) -> None:
    """Accept and close the others' tries, so the queue never fills."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        connection.close()


def _answers(address: str, timeout_s: float) -> str | None:
    """None when ``address`` accepts a TCP connection now; else why not."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=max(0.05, timeout_s)):
            return None
    except socket.gaierror as error:
        return f"host not found: {error.strerror or error}"
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__


def wait_for_peers(own: str, peers: Sequence[str], timeout_s: float, intro: str = "",
                   received: list[int] | None = None) -> None:
    """Log ``intro``, then return once every address of ``peers`` accepts a TCP
    connection; listen on ``own``'s port meanwhile. :class:`PeersMissing` naming those not
    reached after ``timeout_s``; :class:`Stopped` on SIGINT or SIGTERM (noted in
    ``received`` by the caller's :func:`stop_signals`, else by this function's own)."""
    with contextlib.ExitStack() as stack:
        if received is None:
            received = stack.enter_context(stop_signals())
        if intro:
            log.info("%s", intro)
        if peers:
            _wait(own, peers, timeout_s, received)  # this worker's port is free again after
            if not received:
                log.info("all %d other worker(s) listen", len(peers))
        if received:
            raise Stopped(received[0], "while waiting for the other workers")


def _wait(own: str, peers: Sequence[str], timeout_s: float, received: list[int]) -> None:
    deadline = time.monotonic() + timeout_s
    with contextlib.closing(_listen(split_address(own)[1])) as listener:
        listener.setblocking(False)
        pending = {address: "not tried" for address in peers}
        while not received:
            _drain(listener)
            for address in list(pending):
                if received:
                    return
                left = deadline - time.monotonic()
                why = _answers(address, min(1.0, left))
                if why is None:
                    del pending[address]
                else:
                    pending[address] = why
            if not pending:
                # a peer that started before this one may not have tried this one's port
                # yet: it tries every POLL_S, so the listener stays open a little longer
                linger_until = time.monotonic() + LINGER_S
                while not received and time.monotonic() < linger_until:
                    _drain(listener)
                    time.sleep(0.05)
                return
            if time.monotonic() >= deadline:
                missing = [f"{a} ({why})" for a, why in pending.items()]
                raise PeersMissing(
                    f"{len(pending)} of {len(peers)} other worker(s) not reached within "
                    f"{timeout_s:g} s (--peer-timeout): {name_some(missing)}; start the "
                    f"same command on each, or check the addresses in TF_CONFIG")
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return


def run_stoppable(body: Callable[[], int], what: str, received: list[int]) -> int:
    """``body()``'s exit code, run in a forked child; SIGINT or SIGTERM (noted in
    ``received`` by the caller's :func:`stop_signals`) kills the child and ends with one
    line and 128 + the signal. Fork before TensorFlow loads."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: run, and never return into the caller's stack
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with(parent)
        code = 1
        try:
            code = body()
        except ForecasterError as error:
            print(f"forecaster: error: {error}", file=sys.stderr)
            code = error.exit_code
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while not received:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return _code(status)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise Stopped(received[0], what)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` dies, even by SIGKILL
    (``PR_SET_PDEATHSIG``, Linux), so a training child stuck in TensorFlow's wait for its
    peers never outlives the command; a parent already gone ends it at once."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no prctl
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _code(status: int) -> int:
    """A child's wait status as a shell's exit code (128 + signal when killed)."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
