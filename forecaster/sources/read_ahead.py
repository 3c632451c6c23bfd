"""Reading ahead: an iterator drained by a thread into a bounded queue.

Replay decodes a video in one thread while the model, the motion cue and scoring run in
another: OpenCV (decoding, color conversion, resizing, optical flow) and TensorFlow release
the GIL, so on two cores decoding occupies one and the rest fits on the other. Items come
out in order; an exception raised by the iterator is raised again by the consumer, at the
item where it happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: how long a blocked put or get waits before it checks whether it should give up
_POLL_S = 0.1


class _End:
    """The end of the items (with the iterator's exception, if it raised one)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterates ``items`` in a thread named ``name``, at most ``depth`` items ahead.

    Use as a context manager (or call :meth:`close`): leaving early stops the thread
    before the source it reads is closed.
    """

    def __init__(self, items: Iterable[T], *, depth: int, name: str) -> None:
        if depth < 1:
            raise ValueError(f"read-ahead depth must be at least 1, got {depth}")
        self._items = items
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._fill, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: T | _End) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_End(error))
            return
        self._put(_End())

    def __iter__(self) -> Iterator[T]:
        while not self._done:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True  # stopped by close() from elsewhere
                continue
            if isinstance(item, _End):
                self._done = True
                if item.error is not None:
                    raise item.error
                return
            yield item

    def close(self) -> None:
        """Stop the thread (dropping what it read ahead) and wait for it."""
        self._stop.set()
        self._thread.join()
        self._done = True

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
