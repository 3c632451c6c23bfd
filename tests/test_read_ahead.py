"""ReadAhead: replay's reader thread (items in order, errors where they happened, early stop)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from forecaster.sources.read_ahead import ReadAhead

pytestmark = pytest.mark.timeout(30)


def test_items_come_in_order_from_a_named_thread() -> None:
    threads: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(500):
            threads.add(threading.current_thread().name)
            yield i

    with ReadAhead(items(), depth=3, name="read:cam") as reader:
        assert list(reader) == list(range(500))
    assert threads == {"read:cam"}


def test_an_error_of_the_source_is_raised_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("frame 3 is corrupt")

    got = []
    with (ReadAhead(items(), depth=8, name="read:bad") as reader,
          pytest.raises(ValueError, match="frame 3 is corrupt")):
        for item in reader:
            got.append(item)
    assert got == [1, 2]


def test_leaving_early_stops_the_thread_of_an_endless_source() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    reader = ReadAhead(endless(), depth=4, name="read:endless")
    with reader:
        for item in reader:
            if item == 10:
                break
    assert not reader._thread.is_alive()
    with pytest.raises(ValueError, match="depth must be at least 1, got 0"):
        ReadAhead(endless(), depth=0, name="read:none")
