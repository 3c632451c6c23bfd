"""The live page's server (:func:`forecaster.web.process.serve`) in a thread of the test's
own process, for tests that talk to it over real HTTP."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from forecaster.ipc.channels import Flag
from forecaster.web.process import WebSpec, serve


@contextmanager
def serving(spec: WebSpec, name: str = "page-server") -> Iterator[None]:
    """Serve ``spec`` in a thread while the block runs: waits until the server listens,
    then stops it and waits for the thread; fails if the server raised."""
    stop = Flag(mp.get_context("spawn"))
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(serve(spec, stop, ready.set))
        except BaseException as error:
            errors.append(error)
            ready.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        assert ready.wait(20), "the page server did not start"
        assert not errors, errors
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
