from __future__ import annotations

import multiprocessing as mp
import uuid

import numpy as np
import pytest

from forecaster.ipc.ring import FrameRing, RingError


@pytest.fixture
def ring():
    ring = FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 16, 20, slots=10)
    yield ring
    ring.close()
    ring.unlink()


def test_write_and_read_back(ring: FrameRing) -> None:
    frames = [np.full((16, 20), i, np.uint8) for i in range(25)]
    for i, frame in enumerate(frames):
        assert ring.write(frame, 100.0 + i) == i
    out = np.empty((10, 16, 20), np.uint8)
    stamps = np.empty(10)
    assert ring.read(15, 24, out, stamps)
    assert [int(f[0, 0]) for f in out] == list(range(15, 25))
    assert stamps.tolist() == [100.0 + i for i in range(15, 25)]
    # frame 14 has been overwritten, 25 not written yet
    assert not ring.read(14, 15, out, stamps)
    assert not ring.read(24, 25, out, stamps)
    stats = ring.stats()
    assert (stats.latest_seq, stats.frames_captured) == (24, 25)


def test_attach_sees_writes_and_checks_layout(ring: FrameRing) -> None:
    other = FrameRing.attach(ring.name)
    ring.write(np.full((16, 20), 7, np.uint8), 1.0)
    ring.new_epoch()
    ring.set_connected(True)
    assert other.latest_seq == 0
    assert other.stats().epoch == 1 and other.stats().connected
    assert (other.height, other.width, other.slots) == (16, 20, 10)
    other.close()
    with pytest.raises(RingError, match="does not exist"):
        FrameRing.attach("forecaster_test_no_such_ring")


def _writer(name: str, count: int) -> None:
    ring = FrameRing.attach(name)
    for i in range(count):
        ring.write(np.full((16, 20), i % 251, np.uint8), float(i))
    ring.set_ended()
    ring.close()


def test_concurrent_reader_never_sees_torn_frames(ring: FrameRing) -> None:
    ctx = mp.get_context("spawn")
    writer = ctx.Process(target=_writer, args=(ring.name, 20000))
    writer.start()
    out = np.empty((10, 16, 20), np.uint8)
    stamps = np.empty(10)
    good = 0
    while not ring.stats().ended or good == 0:
        latest = ring.latest_seq
        if latest < 3:
            continue
        if ring.read(latest - 2, latest, out, stamps):
            good += 1
            for k in range(3):
                seq = latest - 2 + k
                assert (out[k] == seq % 251).all(), "torn frame"
                assert stamps[k] == float(seq)
    writer.join(timeout=30)
    assert writer.exitcode == 0
    assert good > 0
    # the attaching process did not unlink the ring on exit
    again = FrameRing.attach(ring.name)
    assert again.latest_seq == 19999
    again.close()
