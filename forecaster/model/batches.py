"""The training data in batches, and the progress bar of an epoch.

Window mode draws shuffled clips (:class:`WindowBatches`); stateful mode walks videos side
by side in consecutive chunks (:class:`StatefulGroups`). Both the single-process loop and
the distributed one read them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np

from forecaster.errors import UsageError
from forecaster.sources.preprocess import to_unit

# --- data ------------------------------------------------------------------------------------


class WindowBatches(keras.utils.PyDataset):
    """Batches of clips ``frames[s:s+n]`` with their targets, shuffled per epoch.

    ``target="sequence"``: the target is ``frames[s+1:s+n+1]`` (the next frame after each
    input frame); ``target="next"``: ``frames[s+n:s+n+1]`` (the frame after the clip). The
    order of epoch ``e`` is a function of ``(seed, e)`` alone (:meth:`set_epoch`), so a
    resumed run sees the same batches as one that never stopped.
    """

    def __init__(
        self,
        videos: Sequence[np.ndarray],
        length: int,
        batch_size: int,
        *,
        stride: int,
        shuffle: bool,
        seed: int,
        target: Literal["sequence", "next"] = "sequence",
    ) -> None:
        super().__init__()
        self.videos = list(videos)
        self.length = length
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.target = target
        starts = [
            (v, s)
            for v, frames in enumerate(self.videos)
            for s in range(0, len(frames) - length, stride)
        ]
        self.starts = np.array(starts, dtype=np.int64).reshape(-1, 2)
        self.order = np.arange(len(self.starts))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` (a fixed permutation per epoch and seed)."""
        self.order = np.arange(len(self.starts))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(self.order)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.starts) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def batch_frames(self, index: int) -> int:
        """Input frames in batch ``index`` (for throughput)."""
        return len(self.order[index * self.batch_size : (index + 1) * self.batch_size]) * self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self.starts[self.order[index * self.batch_size : (index + 1) * self.batch_size]]
        clips = to_unit(np.stack([self.videos[v][s : s + self.length + 1]
                                  for v, s in picks]))[..., None]
        if self.target == "next":
            return clips[:, :-1], clips[:, -1:]
        return clips[:, :-1], clips[:, 1:]


@dataclass(frozen=True)
class Group:
    """Videos trained side by side: their indices and the number of chunks they give."""

    members: tuple[int, ...]
    chunks: int


class StatefulGroups:
    """Videos in fixed groups of ``batch`` side by side, each cut into consecutive chunks.

    Groups are consecutive videos in the given order; the last group is filled up with the
    first videos again, so the batch size is fixed. A group runs for as long as its shortest
    video gives whole chunks (``chunk`` inputs and the ``chunk`` next frames).
    """

    def __init__(self, videos: Sequence[np.ndarray], batch_size: int, chunk: int) -> None:
        if not videos:
            raise UsageError("stateful training needs at least one video")
        self.videos = list(videos)
        self.chunk = chunk
        self.batch = min(batch_size, len(self.videos))
        count = len(self.videos)
        groups = []
        for first in range(0, count, self.batch):
            members = tuple((first + i) % count for i in range(self.batch))
            shortest = min(len(self.videos[m]) for m in members)
            groups.append(Group(members, max(0, (shortest - 1) // chunk)))
        self.groups = [g for g in groups if g.chunks > 0]

    @property
    def num_chunks(self) -> int:
        return sum(g.chunks for g in self.groups)

    @property
    def frames_per_epoch(self) -> int:
        return self.num_chunks * self.batch * self.chunk

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """(inputs (B, chunk, H, W, 1), targets (B, chunk, H, W, 1), new group?) per chunk."""
        for group in self.groups:
            span = group.chunks * self.chunk + 1
            frames = to_unit(np.stack([self.videos[m][:span] for m in group.members]))[..., None]
            for k in range(group.chunks):
                start = k * self.chunk
                yield (
                    frames[:, start : start + self.chunk],
                    frames[:, start + 1 : start + self.chunk + 1],
                    k == 0,
                )


class Progress:
    """A progress bar per epoch with the running loss and the throughput in frames/s."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, steps: int) -> None:
        self.bar = None
        self.started = time.perf_counter()
        self.frames = 0
        self.total = 0.0
        self.count = 0
        if enabled:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
            self.bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "frames/s"])

    def update(self, index: int, loss: float, frames: int, *, mean: bool = False) -> None:
        """``loss``: the batch's loss (``mean`` False) or the running mean already."""
        self.frames += frames
        self.total += loss
        self.count += 1
        if self.bar is not None:
            shown = loss if mean else self.total / self.count
            rate = self.frames / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(index + 1, [("loss", shown), ("frames/s", rate)])
