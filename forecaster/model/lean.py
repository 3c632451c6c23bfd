"""A lean runtime for the per-tick step: the one-frame graph run outside TensorFlow.

An 83 MFLOP tick of the default model costs TensorFlow more in fixed per-call overhead
than in arithmetic. :class:`LeanStepper` runs the one-frame step (frame + state in,
prediction + state out) on LiteRT (``ai-edge-litert``, the optional extra ``lean``) and
leaves every other call (catch-up, re-priming, replay chunks) to the TensorFlow
:class:`~forecaster.model.step.Stepper` it wraps; both use the same weights and the same
state arrays, so a camera's state moves freely between the two.

The converted model is made with Keras' own ``export(format="litert")`` from the loaded
model's one-frame graph, with an open batch size (the interpreter is resized per batch
size), and cached in :func:`cache_dir` under a hash of the model file and the versions
that made it. ``tf.lite.TFLiteConverter.from_concrete_functions`` is not used: it reports
success and writes a model whose weights were never initialised (every output NaN).

Nothing converted is trusted: before the lean runtime serves a batch size, a few ticks
with the state carried run on both and must agree within :data:`TOLERANCE`; on a
difference, or on any error converting or loading, one warning names the runtime and the
difference and the step stays on TensorFlow.

``model.runtime = "auto"`` takes LiteRT when it is installed and passes that check, and
TensorFlow otherwise; and TensorFlow whenever TensorFlow sees a GPU, which LiteRT's
Python package cannot use, or Keras runs on another backend (the conversion starts from
a TensorFlow graph).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from forecaster.model.runners import Runner
    from forecaster.model.step import Stepper

log = logging.getLogger("forecaster.model")

#: the values of ``model.runtime``
RUNTIMES = ("auto", "tensorflow", "litert")
#: lean runtime -> (the module it imports, the package that provides it, its name in logs)
LEAN = {"litert": ("ai_edge_litert", "ai-edge-litert", "LiteRT")}
#: largest difference allowed between a lean runtime's tick and TensorFlow's
TOLERANCE = 1e-5
#: ticks, state carried, compared against TensorFlow per batch size before serving it
CHECK_TICKS = 3
#: alternating rounds timing both runtimes per batch size, when the fastest one is wanted
SPEED_ROUNDS = 7
#: environment variable naming the folder of converted models
CACHE_ENV = "FORECASTER_RUNTIME_CACHE"


def installed(runtime: str) -> bool:
    """Is the lean runtime's package importable (without importing it)."""
    module = LEAN[runtime][0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cache_dir() -> Path:
    """Where converted models are kept: ``$FORECASTER_RUNTIME_CACHE``, else
    ``$XDG_CACHE_HOME/forecaster/runtimes``, else ``~/.cache/forecaster/runtimes``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forecaster" / "runtimes"


def _versions(runtime: str) -> str:
    from importlib import metadata

    names = ["keras", "tensorflow", LEAN[runtime][1]]
    found = []
    for name in names:
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}=?")
    return ",".join(found)


def converted_path(model_file: Path, runtime: str = "litert") -> Path:
    """The cache file of ``model_file``'s one-frame step converted for ``runtime``: keyed
    by a hash of the model file's bytes and of the versions that convert and run it."""
    digest = hashlib.sha256()
    digest.update(Path(model_file).read_bytes())
    digest.update(_versions(runtime).encode())
    return cache_dir() / f"{digest.hexdigest()[:24]}-{runtime}.tflite"


def export_litert(tick_model: Any, path: Path) -> Path:
    """Write ``tick_model`` (the one-frame step model) as a LiteRT file at ``path``,
    atomically (a half-written file is never seen); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".convert-") as folder:
        partial = Path(folder) / "tick.tflite"
        with _quiet_stdout():
            tick_model.export(str(partial), format="litert", verbose=False)
        os.replace(partial, path)
    return path


@contextlib.contextmanager
def _quiet_fd(fd: int) -> Iterator[None]:
    """Native libraries' banners (LiteRT's "Created TensorFlow Lite XNNPACK delegate",
    the converter's progress) kept off a file descriptor for the duration."""
    stream = sys.stderr if fd == 2 else sys.stdout
    stream.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    with _quiet_fd(1), _quiet_fd(2):
        yield


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class LiteRTTick:
    """The converted one-frame step on LiteRT: one interpreter per batch size."""

    name = "LiteRT"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        #: the model, read once (the file may go away: a conversion for this process only)
        self.content = self.path.read_bytes()
        self.threads = threads or usable_cpus()
        self._interpreter_class = Interpreter
        self._by_batch: dict[int, Any] = {}
        # the tensors of the signature's inputs (frames, state_0, ...) and outputs
        # (output_0 = the prediction, output_1... = the state), read from an interpreter
        # of its own: a signature runner keeps its interpreter from being resized
        with _quiet_fd(2):
            probe = Interpreter(model_content=self.content, num_threads=1)
            signature = probe.get_signature_runner()
            inputs = signature.get_input_details()
            outputs = signature.get_output_details()
        names = ["frames", *sorted((n for n in inputs if n != "frames"),
                                   key=lambda n: int(n.rsplit("_", 1)[1]))]
        self._inputs = [(int(inputs[n]["index"]), [int(d) for d in inputs[n]["shape"][1:]])
                        for n in names]
        self._outputs = [int(outputs[f"output_{i}"]["index"]) for i in range(len(outputs))]
        self._interpreter(1)  # a file that does not load fails here, not at the first tick

    def _interpreter(self, batch: int) -> Any:
        found = self._by_batch.get(batch)
        if found is not None:
            return found
        with _quiet_fd(2):
            interpreter = self._interpreter_class(model_content=self.content,
                                                  num_threads=self.threads)
            for index, shape in self._inputs:
                interpreter.resize_tensor_input(index, [batch, *shape])
            interpreter.allocate_tensors()
        found = self._by_batch[batch] = interpreter
        return found

    def __call__(self, frames: np.ndarray, state: Sequence[np.ndarray]) -> list[np.ndarray]:
        interpreter = self._interpreter(frames.shape[0])
        for (index, _), array in zip(self._inputs, (frames, *state), strict=True):
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in self._outputs]  # copies


class LeanStepper:
    """A :class:`~forecaster.model.step.Stepper` whose one-frame ticks run on a lean
    runtime (each batch size checked against TensorFlow before it is served); chunks,
    and every tick after a failed check, run on the stepper itself."""

    def __init__(self, stepper: Stepper, tick: LiteRTTick, *, fastest: bool = False) -> None:
        self.stepper = stepper
        self.tick: LiteRTTick | None = tick
        #: serve each batch size on whichever runtime steps it faster (``model.runtime =
        #: "auto"``), timed once per batch size after its check; else the lean one always
        self.fastest = fastest
        #: batch sizes TensorFlow steps faster: they stay there
        self._slower: set[int] = set()
        #: (batch size, largest difference) of the check that sent every step back to
        #: TensorFlow, if one did
        self.failed_check: tuple[int, float] | None = None
        self.height = stepper.height
        self.width = stepper.width
        self.state_shapes = list(stepper.state_shapes)
        self._checked: set[int] = set()
        #: ticks served by the lean runtime
        self.lean_ticks = 0

    @property
    def runtime(self) -> str:
        """What runs the one-frame ticks now: the lean runtime's name or "TensorFlow"."""
        return self.tick.name if self.tick is not None else "TensorFlow"

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return self.stepper.initial_state(batch)

    def _fits(self, frames: np.ndarray, state: Sequence[np.ndarray]) -> bool:
        """Is this a well-formed one-frame call (anything else goes to the stepper, which
        also says what is wrong with a malformed one)."""
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.float32 and frames.ndim == 5
                and frames.shape[1:] == (1, self.height, self.width, 1)
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
        """As :meth:`Stepper.run`; one-frame calls on the lean runtime."""
        if self.tick is None or not self._fits(frames, state):
            return self.stepper.run(frames, state)
        batch = frames.shape[0]
        if (batch not in self._checked and not self.check(batch)) or batch in self._slower:
            return self.stepper.run(frames, state)
        outputs = self.tick(np.ascontiguousarray(frames),
                            [np.ascontiguousarray(array) for array in state])
        self.lean_ticks += 1
        return outputs[0], outputs[1:]

    def difference(self, batch: int, ticks: int = CHECK_TICKS) -> float:
        """Largest difference between the lean tick and TensorFlow's over ``ticks`` ticks
        of seeded random frames at ``batch``, each carrying its own state (inf when the
        lean runtime's output is not finite or has the wrong shape)."""
        assert self.tick is not None
        rng = np.random.default_rng(batch)
        ours = theirs = self.initial_state(batch)
        worst = 0.0
        for _ in range(ticks):
            frames = rng.random((batch, 1, self.height, self.width, 1), dtype=np.float32)
            prediction, theirs = self.stepper.run(frames, theirs)
            outputs = self.tick(frames, ours)
            reference = [prediction, *theirs]
            if len(outputs) != len(reference):
                return float("inf")
            for got, want in zip(outputs, reference, strict=True):
                if got.shape != want.shape or not np.isfinite(got).all():
                    return float("inf")
                worst = max(worst, float(np.max(np.abs(got - want))))
            ours = outputs[1:]
        return worst

    def check(self, batch: int) -> bool:
        """Compare the lean runtime with TensorFlow at ``batch`` (once per batch size); on
        a difference over :data:`TOLERANCE` or an error, warn and stay on TensorFlow."""
        assert self.tick is not None
        name = self.tick.name
        try:
            worst = self.difference(batch)
        except Exception as error:  # a runtime that fails to run is not used
            log.warning("model.runtime: %s failed on a one-frame step at batch %d (%s: %s); "
                        "running on TensorFlow", name, batch, type(error).__name__, error)
            self.tick = None
            return False
        if not worst <= TOLERANCE:
            self.failed_check = (batch, worst)
            log.warning("model.runtime: %s's one-frame step differs from TensorFlow's by up "
                        "to %.3g at batch %d (more than %g); running on TensorFlow",
                        name, worst, batch, TOLERANCE)
            self.tick = None
            return False
        self._checked.add(batch)
        log.debug("model.runtime: %s matches TensorFlow at batch %d (max difference %.3g)",
                  name, batch, worst)
        if self.fastest:
            ours, theirs = self.timings(batch)
            if theirs < ours:
                self._slower.add(batch)
            log.info("model.runtime auto: one-frame steps of %d camera(s) on %s (%.2f ms "
                     "against %.2f ms on %s)", batch,
                     "TensorFlow" if theirs < ours else name, min(ours, theirs),
                     max(ours, theirs), name if theirs < ours else "TensorFlow")
        return True

    def timings(self, batch: int, rounds: int = SPEED_ROUNDS) -> tuple[float, float]:
        """Median ms per one-frame call at ``batch``: (lean runtime, TensorFlow), timed in
        alternating rounds on the same frames and state."""
        assert self.tick is not None
        frames = np.random.default_rng(batch).random(
            (batch, 1, self.height, self.width, 1), dtype=np.float32)
        state = self.initial_state(batch)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(rounds):
            began = time.perf_counter()
            self.tick(frames, state)
            ours.append(time.perf_counter() - began)
            began = time.perf_counter()
            self.stepper.run(frames, state)
            theirs.append(time.perf_counter() - began)
        return float(np.median(ours)) * 1e3, float(np.median(theirs)) * 1e3


def lean_runner(runner: Runner, model_file: Path, runtime: str, device: str) -> Runner:
    """The runner the worker uses for ``model.runtime = runtime``: ``runner`` itself
    (TensorFlow), or a :class:`LeanStepper` around it when a lean runtime is chosen,
    installed, converts, loads and matches TensorFlow at batch 1.

    ``device`` is where TensorFlow runs ("CPU" or "GPU (...)"): "auto" keeps TensorFlow on
    a GPU. A failure logs one warning and returns ``runner``.
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
        choice = next((name for name in LEAN if installed(name)), None)
        if choice is None:
            return runner
    else:
        choice = runtime
    label = LEAN[choice][2]
    try:
        path = converted_path(model_file, choice)
        if path.is_file():
            tick = LiteRTTick(path)
        else:
            log.info("model.runtime: converting %s's one-frame step for %s into %s",
                     model_file, label, path)
            try:
                tick = LiteRTTick(export_litert(runner.tick_model, path))
            except OSError as error:  # the cache is not writable: convert for this run only
                log.info("model.runtime: cannot cache the conversion (%s); converting into a "
                         "temporary folder", error)
                with tempfile.TemporaryDirectory(prefix="forecaster-") as folder:
                    tick = LiteRTTick(export_litert(runner.tick_model,
                                                    Path(folder) / "tick.tflite"))
        lean = LeanStepper(runner, tick, fastest=runtime == "auto")
    except Exception as error:  # conversion or loading failed: TensorFlow serves
        log.warning("model.runtime: %s unusable (%s: %s); running on TensorFlow",
                    label, type(error).__name__, _first_line(error))
        return runner
    if not lean.check(1):
        return runner
    return lean
