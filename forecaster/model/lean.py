"""Lean runtimes for the per-tick step: the one-frame graph run outside TensorFlow.

An 83 MFLOP tick of the default model costs TensorFlow more in fixed per-call overhead
than in arithmetic. :class:`LeanStepper` runs the one-frame step (frame + state in,
prediction + state out) on LiteRT (``ai-edge-litert``, the optional extra ``lean``) or
OpenVINO (``openvino``, the optional extra ``openvino``), and the worker's short chunks
(catch-ups and re-primes, up to :data:`LEAN_CHUNK_MAX` frames) as that many of those
ticks, the state carried (on OpenVINO, timed here as fast as TensorFlow's graph of several
frames up to 64 cameras per call, and much faster for a few); it leaves longer chunks
(replay's, eval's) to the TensorFlow :class:`~forecaster.model.step.Stepper` it wraps; all use the same weights and the same
state arrays, so a camera's state moves freely between them.

The conversions are :mod:`forecaster.model.ticks`.

Nothing converted is trusted: before a lean runtime serves a batch size, a few ticks with
the state carried run on it and on TensorFlow and must agree within :data:`TOLERANCE`; on a
difference, or on any error converting or loading, one warning names the runtime and the
difference and that runtime is not used again. While it serves, one tick of each batch size
every :data:`AUDIT_S` seconds also runs on TensorFlow: on a difference that tick's result is
TensorFlow's, a warning says so, and the batch size is checked again from scratch before
the runtime serves it again; after :data:`AUDIT_FAILURES_MAX` such differences the runtime
is not used again.

``model.runtime = "auto"`` converts for every lean runtime installed and, per batch size,
serves the one-frame step on whichever of them (and TensorFlow) stepped it fastest in
timing rounds after its check; TensorFlow alone whenever TensorFlow sees a GPU, which
neither lean runtime's Python package here uses, or Keras runs on another backend (the
conversions start from a TensorFlow graph).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forecaster.model.ticks import LEAN, Tick, convert, first_line, installed

if TYPE_CHECKING:
    from forecaster.model.runners import Runner
    from forecaster.model.step import Stepper

log = logging.getLogger("forecaster.model")

#: the values of ``model.runtime``
RUNTIMES = ("auto", "tensorflow", "litert", "openvino")
#: largest difference allowed between a lean runtime's tick and TensorFlow's
TOLERANCE = 1e-5
#: ticks, state carried, compared against TensorFlow per batch size before serving it
CHECK_TICKS = 3
#: seconds between the ticks of a batch size a lean runtime serves that also run on
#: TensorFlow and are compared (a newly made LiteRT interpreter was, rarely, off with no
#: error; one that goes wrong while it serves is caught within this long)
AUDIT_S = 600.0
#: audits a lean runtime may fail (each followed by a fresh check it passed) before it is
#: not used again
AUDIT_FAILURES_MAX = 3
#: alternating rounds timing both runtimes per batch size, when the fastest one is wanted
SPEED_ROUNDS = 7
#: longest chunk (the worker's catch-ups and re-primes) run as that many lean ticks, the
#: state carried, at a batch size a lean runtime serves; longer ones (replay's chunks of
#: 128, whose cost per frame on TensorFlow's chunk graph falls with the length) run there
LEAN_CHUNK_MAX = 16
class LeanStepper:
    """A :class:`~forecaster.model.step.Stepper` whose one-frame ticks run on lean
    runtimes (each batch size checked against TensorFlow before it is served); chunks, and
    every tick no lean runtime serves, run on the stepper itself.

    ``ticks``: one lean runtime, or several in order of preference. With ``fastest``
    (``model.runtime = "auto"``), each batch size, once checked, is served by whichever of
    them and TensorFlow stepped it fastest in alternating timing rounds; else by the first
    one that passed its check.
    """

    def __init__(self, stepper: Stepper, ticks: Tick | Sequence[Tick], *,
                 fastest: bool = False, audit_s: float = AUDIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stepper = stepper
        #: the lean runtimes still in use (one whose check failed is dropped)
        self.ticks: list[Tick] = list(ticks) if isinstance(ticks, Sequence) else [ticks]
        self.fastest = fastest
        #: batch size -> the lean runtime serving it (None: TensorFlow), once decided
        self._serving: dict[int, Tick | None] = {}
        #: (batch size, largest difference) of the last check that dropped a runtime
        self.failed_check: tuple[int, float] | None = None
        #: batch size -> {runtime name: median ms per call} of its timing rounds
        self.timed: dict[int, dict[str, float]] = {}
        self.height = stepper.height
        self.width = stepper.width
        self.state_shapes = list(stepper.state_shapes)
        #: ticks served by a lean runtime, all of them together and per runtime name
        self.lean_ticks = 0
        self.ticks_by_runtime: dict[str, int] = {}
        #: seconds between audits of a batch size (a tick also run on TensorFlow)
        self.audit_s = audit_s
        self._clock = clock
        #: batch size -> time.monotonic() from which its next tick is audited
        self._audit_due: dict[int, float] = {}
        #: audits run, and per runtime name those that found a difference
        self.audits = 0
        self.audit_failures_by_runtime: dict[str, int] = {}

    @property
    def audit_failures(self) -> int:
        """Audits that found a difference, every runtime's together."""
        return sum(self.audit_failures_by_runtime.values())

    @property
    def tick(self) -> Tick | None:
        """The first lean runtime still in use, or None when every one failed its check."""
        return self.ticks[0] if self.ticks else None

    @property
    def runtime(self) -> str:
        """What runs the one-frame ticks: the lean runtimes still in use ("LiteRT",
        "LiteRT or OpenVINO, the faster per batch size") or "TensorFlow"."""
        if not self.ticks:
            return "TensorFlow"
        if len(self.ticks) == 1 and not self.fastest:
            return self.ticks[0].name
        names = " or ".join([*(tick.name for tick in self.ticks), "TensorFlow"]
                            if self.fastest else [tick.name for tick in self.ticks])
        return f"{names}, the fastest per batch size" if self.fastest else names

    @property
    def prefers_ticks(self) -> bool:
        """Chunks run as one-frame ticks here (a lean runtime is in use), so the worker
        does best to batch the waiting frames of its cameras step by step."""
        return bool(self.ticks)

    def call_ms(self, batch: int) -> float | None:
        """The time one one-frame call at ``batch`` took on the runtime serving it, in the
        timing rounds that chose it (``auto``); None when not timed. The engine splits a
        turn's cameras into calls by it (:func:`forecaster.detection.engine.split_batch`)."""
        times = self.timed.get(batch)
        if times is None:
            return None
        return times.get(self.serving(batch) or "", None)

    def serving(self, batch: int) -> str | None:
        """The name of the runtime serving one-frame steps at ``batch`` (None: not decided
        yet, before the first tick of that size)."""
        if batch not in self._serving:
            return None
        tick = self._serving[batch]
        return "TensorFlow" if tick is None else tick.name

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return self.stepper.initial_state(batch)

    def _fits(self, frames: np.ndarray, state: Sequence[np.ndarray]) -> bool:
        """Is this a well-formed call of float32 arrays (anything else goes to the stepper,
        which also says what is wrong with a malformed one)."""
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.float32 and frames.ndim == 5
                and 1 <= frames.shape[1] <= LEAN_CHUNK_MAX
                and frames.shape[2:] == (self.height, self.width, 1)
                and len(state) == len(self.state_shapes)):
            return False
        batch = frames.shape[0]
        return all(
            isinstance(array, np.ndarray) and array.dtype == np.float32
            and array.shape == (batch, *shape)
            for array, shape in zip(state, self.state_shapes, strict=True)
        )

    def run(
        self, frames: np.ndarray, state: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """As :meth:`Stepper.run`; one-frame calls on the lean runtime serving their batch
        size, and chunks of up to :data:`LEAN_CHUNK_MAX` frames as that many of its ticks."""
        if not self.ticks or not self._fits(frames, state):
            return self.stepper.run(frames, state)
        batch = frames.shape[0]
        tick = self._serving[batch] if batch in self._serving else self._decide(batch)
        if tick is None:
            return self.stepper.run(frames, state)
        carried = [np.ascontiguousarray(array) for array in state]
        if frames.shape[1] == 1:
            outputs, _ = self._step(tick, batch, np.ascontiguousarray(frames), carried)
            return outputs[0], outputs[1:]
        predictions = np.empty_like(frames)
        serving: Tick | None = tick
        for t in range(frames.shape[1]):
            one = np.ascontiguousarray(frames[:, t : t + 1])
            if serving is None:  # an audit found a difference: the rest on TensorFlow
                prediction, carried = self.stepper.run(one, carried)
                predictions[:, t] = prediction[:, 0]
                continue
            outputs, serving = self._step(serving, batch, one, carried)
            predictions[:, t] = outputs[0][:, 0]
            carried = outputs[1:]
        return predictions, carried

    def _step(self, tick: Tick, batch: int, frames: np.ndarray, state: list[np.ndarray]
              ) -> tuple[list[np.ndarray], Tick | None]:
        """One tick on ``tick``, and, when the batch size's audit is due, on TensorFlow too:
        the outputs (TensorFlow's where the two differ by more than :data:`TOLERANCE`, the
        batch size then left to be checked again at its next tick) and the runtime that
        goes on serving (None after such a difference)."""
        outputs = self._tick(tick, frames, state)
        now = self._clock()
        if now < self._audit_due.setdefault(batch, now + self.audit_s):
            return outputs, tick
        self._audit_due[batch] = now + self.audit_s
        prediction, theirs = self.stepper.run(frames, state)
        reference = [prediction, *theirs]
        self.audits += 1
        worst = _largest_difference(outputs, reference)
        if worst <= TOLERANCE:
            log.debug("model.runtime: %s still matches TensorFlow at batch %d (max "
                      "difference %.3g)", tick.name, batch, worst)
            return outputs, tick
        failed = self.audit_failures_by_runtime[tick.name] = (
            self.audit_failures_by_runtime.get(tick.name, 0) + 1)
        self._audit_due.pop(batch, None)
        if failed >= AUDIT_FAILURES_MAX:
            log.warning("model.runtime: %s's one-frame step differed from TensorFlow's by "
                        "%.3g at batch %d while serving, its %d%s such difference; that "
                        "step's result is TensorFlow's, and %s", tick.name, worst, batch,
                        failed, _ordinal(failed), self._instead(tick))
            self._drop(tick)
            return reference, None
        log.warning("model.runtime: %s's one-frame step differed from TensorFlow's by %.3g at "
                    "batch %d while serving; that step's result is TensorFlow's, and the "
                    "batch size is checked again before %s serves it", tick.name, worst,
                    batch, tick.name)
        tick.release(batch)
        self._serving.pop(batch, None)  # decided again, on a fresh instance, at the next tick
        return reference, None

    def _tick(self, tick: Tick, frames: np.ndarray, state: Sequence[np.ndarray]
              ) -> list[np.ndarray]:
        outputs = tick(frames, state)
        self.lean_ticks += 1
        self.ticks_by_runtime[tick.name] = self.ticks_by_runtime.get(tick.name, 0) + 1
        return outputs

    def difference(self, batch: int, ticks: int = CHECK_TICKS, tick: Tick | None = None) -> float:
        """Largest difference between a lean runtime's tick (``tick``, else the first one)
        and TensorFlow's over ``ticks`` ticks of seeded random frames at ``batch``, each
        carrying its own state (inf when the lean runtime's output is not finite or has the
        wrong shape)."""
        tick = tick if tick is not None else self.tick
        assert tick is not None
        rng = np.random.default_rng(batch)
        ours = theirs = self.initial_state(batch)
        worst = 0.0
        for _ in range(ticks):
            frames = rng.random((batch, 1, self.height, self.width, 1), dtype=np.float32)
            prediction, theirs = self.stepper.run(frames, theirs)
            outputs = tick(frames, ours)
            worst = max(worst, _largest_difference(outputs, [prediction, *theirs]))
            if worst == float("inf"):
                return worst
            ours = outputs[1:]
        return worst

    def _passes(self, tick: Tick, batch: int) -> bool:
        """Compare ``tick`` with TensorFlow at ``batch``; on a difference over
        :data:`TOLERANCE` or an error, warn and stop using that runtime."""
        name = tick.name
        try:
            worst = self.difference(batch, tick=tick)
        except Exception as error:  # a runtime that fails to run is not used
            log.warning("model.runtime: %s failed on a one-frame step at batch %d (%s: %s); "
                        "%s", name, batch, type(error).__name__, error, self._instead(tick))
            self._drop(tick)
            return False
        if not worst <= TOLERANCE:
            # once more from scratch: a newly made LiteRT interpreter at a batch of 4 was
            # off by 1.79 in one of many runs of the test suite, where the same file
            # matched in every other, so one failed instance is not held against the
            # runtime (a fresh interpreter or compiled model must match on its own)
            tick.release(batch)
            try:
                again = self.difference(batch, tick=tick)
            except Exception:  # a runtime that fails to run now: the first difference stands
                again = float("inf")
            if again <= TOLERANCE:
                log.info("model.runtime: %s's one-frame step differed from TensorFlow's by "
                         "%.3g at batch %d; made again, it matches (%.3g)",
                         name, worst, batch, again)
                return True
            self.failed_check = (batch, worst)
            log.warning("model.runtime: %s's one-frame step differs from TensorFlow's by up "
                        "to %.3g at batch %d (more than %g); %s",
                        name, worst, batch, TOLERANCE, self._instead(tick))
            self._drop(tick)
            return False
        log.debug("model.runtime: %s matches TensorFlow at batch %d (max difference %.3g)",
                  name, batch, worst)
        return True

    def _instead(self, tick: Tick) -> str:
        others = [other.name for other in self.ticks if other is not tick]
        return f"not using it (steps on {' or '.join([*others, 'TensorFlow'])})" if others \
            else "running on TensorFlow"

    def _drop(self, tick: Tick) -> None:
        self.ticks = [other for other in self.ticks if other is not tick]
        for batch, serving in list(self._serving.items()):
            if serving is tick:
                del self._serving[batch]  # decided again at its next tick

    def check(self, batch: int) -> bool:
        """Check every lean runtime still in use at ``batch`` and decide which serves it
        (True: a lean runtime passed)."""
        self._decide(batch)
        return bool(self.ticks)

    def _decide(self, batch: int) -> Tick | None:
        passed = [tick for tick in list(self.ticks) if self._passes(tick, batch)]
        if not passed:
            chosen = None
        elif not self.fastest:
            chosen = passed[0]
        else:
            times = self.timings(batch, ticks=passed)
            self.timed[batch] = times
            fastest = min(times, key=lambda name: times[name])
            chosen = next((tick for tick in passed if tick.name == fastest), None)
            log.info("model.runtime auto: one-frame steps of %d camera(s) on %s (ms per call: "
                     "%s)", batch, fastest,
                     ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(times.items(),
                                                                          key=lambda i: i[1])))
        self._serving[batch] = chosen
        for tick in passed:  # what the others compiled for this batch size is not needed
            if tick is not chosen:
                tick.release(batch)
        return chosen

    def timings(self, batch: int, rounds: int = SPEED_ROUNDS,
                ticks: Sequence[Tick] | None = None) -> dict[str, float]:
        """Median ms per one-frame call at ``batch`` of each lean runtime (``ticks``, else
        those in use) and of TensorFlow, by name, timed in alternating rounds on the same
        frames and state."""
        frames = np.random.default_rng(batch).random(
            (batch, 1, self.height, self.width, 1), dtype=np.float32)
        state = self.initial_state(batch)
        runs: dict[str, Any] = {tick.name: (lambda t=tick: t(frames, state))
                                for tick in (self.ticks if ticks is None else ticks)}
        runs["TensorFlow"] = lambda: self.stepper.run(frames, state)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, call in runs.items():
                began = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - began)
        return {name: float(np.median(values)) * 1e3 for name, values in samples.items()}


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _largest_difference(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]
                        ) -> float:
    """Largest absolute difference between a lean tick's outputs and TensorFlow's (inf when
    their number or a shape differs, or either is not finite)."""
    if len(outputs) != len(reference):
        return float("inf")
    worst = 0.0
    for got, want in zip(outputs, reference, strict=True):
        if (got.shape != want.shape or not np.isfinite(got).all()
                or not np.isfinite(want).all()):
            return float("inf")
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def lean_runner(runner: Runner, model_file: Path, runtime: str, device: str) -> Runner:
    """The runner the worker uses for ``model.runtime = runtime``: ``runner`` itself
    (TensorFlow), or a :class:`LeanStepper` around it when a lean runtime is chosen (for
    "auto": every one installed), installed, converts, loads and matches TensorFlow at
    batch 1.

    ``device`` is where TensorFlow runs ("CPU" or "GPU (...)"): "auto" keeps TensorFlow on
    a GPU. Each failure logs one warning; with none left, ``runner`` is returned.
    """
    from forecaster.model.step import Stepper

    if runtime == "tensorflow" or not isinstance(runner, Stepper):
        return runner
    import keras

    if keras.config.backend() != "tensorflow":  # the conversion starts from TensorFlow
        if runtime != "auto":
            log.warning("model.runtime: %s needs Keras' TensorFlow backend, not %s; one-frame "
                        "steps stay on %s", LEAN[runtime][2], keras.config.backend(),
                        keras.config.backend())
        return runner
    if runtime == "auto":
        if device.startswith("GPU"):
            log.info("model.runtime auto: TensorFlow sees a %s; one-frame steps stay there",
                     device)
            return runner
        choices = [name for name in LEAN if installed(name)]
    else:
        choices = [runtime]
    ticks: list[Tick] = []
    for name in choices:
        try:
            ticks.append(convert(name, runner.tick_model, model_file))
        except Exception as error:  # conversion or loading failed: the others serve
            log.warning("model.runtime: %s unusable (%s: %s); not using it", LEAN[name][2],
                        type(error).__name__, first_line(error))
    if not ticks:
        return runner
    lean = LeanStepper(runner, ticks, fastest=runtime == "auto")
    if not lean.check(1):
        return runner
    return lean
