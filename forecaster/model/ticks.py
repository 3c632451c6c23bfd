"""The one-frame step converted for the lean runtimes, LiteRT and OpenVINO, and run there.

The converted models are made with Keras' own ``export(format="litert")`` and
``export(format="openvino")`` from the loaded model's one-frame graph, with an open batch
size (LiteRT's interpreter is resized per batch size; OpenVINO compiles the model once per
batch size, in f32: its default on a CPU with bf16 support is bf16, off by about 7e-3),
and cached in :func:`cache_dir` under a hash of the model file and the versions that made
it. ``tf.lite.TFLiteConverter.from_concrete_functions`` is not used: it reports success and
writes a model whose weights were never initialised (every output NaN).
:mod:`forecaster.model.lean` decides whether and when they serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("forecaster.model")

#: lean runtime -> (the module it imports, the package that provides it, its name in logs,
#: the optional extra that installs it)
LEAN = {
    "litert": ("ai_edge_litert", "ai-edge-litert", "LiteRT", "lean"),
    "openvino": ("openvino", "openvino", "OpenVINO", "openvino"),
}
#: the file a conversion for each lean runtime is cached in (its suffix)
SUFFIX = {"litert": ".tflite", "openvino": ".xml"}
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
    return cache_dir() / f"{digest.hexdigest()[:24]}-{runtime}{SUFFIX[runtime]}"


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


def import_openvino() -> Any:
    """``openvino``, imported with its usage telemetry off.

    Importing ``openvino`` sends an "import" event to Google Analytics by default (and the
    converter one per conversion), and writes a client id under ``~/intel``: a daemon on an
    edge box must not reach out. When its telemetry package cannot be imported, OpenVINO
    uses its own no-op stand-in, so it is made unimportable in this process before
    ``openvino`` is first imported."""
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    import openvino

    return openvino


def export_openvino(tick_model: Any, path: Path) -> Path:
    """Write ``tick_model`` as an OpenVINO model at ``path`` (``.xml``, its weights in the
    ``.bin`` beside it); the weights land first and the ``.xml`` last, each renamed into
    place, so a complete ``.xml`` always has its weights; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".convert-") as folder:
        partial = Path(folder) / "tick.xml"
        import_openvino()  # before Keras imports it
        with _quiet_stdout():
            tick_model.export(str(partial), format="openvino", verbose=False)
        os.replace(partial.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(partial, path)
    return path


EXPORTS = {"litert": export_litert, "openvino": export_openvino}


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


def first_line(error: BaseException) -> str:
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

    def release(self, batch: int) -> None:
        """Free the interpreter of ``batch`` (another runtime serves it)."""
        self._by_batch.pop(batch, None)


class OpenVINOTick:
    """The converted one-frame step on OpenVINO's CPU plugin: one compiled model per batch
    size, pinned to f32 (``INFERENCE_PRECISION_HINT``) and to the latency hint, its threads
    not pinned to cores."""

    name = "OpenVINO"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ov = import_openvino()
        self.path = Path(path)
        self.threads = threads or usable_cpus()
        self._core = ov.Core()
        # read once: the files may go away (a conversion for this process only)
        self._model = self._core.read_model(str(self.path))
        names = [port.get_any_name() for port in self._model.inputs]
        if "frames" not in names:
            raise ValueError(f"{self.path} has no input named 'frames' (inputs: {names})")
        # frames, state_0, state_1, ...: the order of the one-frame graph's inputs
        self._order = ["frames", *sorted((n for n in names if n != "frames"),
                                         key=lambda n: int(n.rsplit("_", 1)[1]))]
        #: prediction + one output per state array, in the graph's order (an exported
        #: graph may carry more outputs than that; they are not read)
        self._outputs = len(self._order)
        self._by_batch: dict[int, Any] = {}
        self._request(1)  # a file that does not load or compile fails here

    def _request(self, batch: int) -> Any:
        found = self._by_batch.get(batch)
        if found is not None:
            return found
        model = self._model.clone()
        shapes = {}
        for port in model.inputs:
            dims = [int(d.get_length()) for d in list(port.get_partial_shape())[1:]]
            shapes[port.get_any_name()] = [batch, *dims]
        model.reshape(shapes)
        compiled = self._core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            # threads not pinned to cores: the box runs capture processes beside the
            # worker (a call of 64 cameras with two busy processes on 2 cores: 89 ms
            # against 142 ms pinned; the same idle)
            "ENABLE_CPU_PINNING": False,
        })
        if len(compiled.outputs) < self._outputs:
            raise ValueError(f"{self.path} has {len(compiled.outputs)} outputs, fewer than "
                             f"the {self._outputs} of a one-frame step")
        found = self._by_batch[batch] = compiled.create_infer_request()
        return found

    def __call__(self, frames: np.ndarray, state: Sequence[np.ndarray]) -> list[np.ndarray]:
        request = self._request(frames.shape[0])
        # the inputs read in place, not copied into the request's tensors first (a
        # synchronous call: nothing changes them meanwhile): 0.745 against 0.796 ms a call
        # of one camera here, the same outputs (benchmarks/openvino_inputs.py)
        request.infer(dict(zip(self._order, (frames, *state), strict=True)),
                      share_inputs=True)
        return [request.get_output_tensor(i).data.copy() for i in range(self._outputs)]

    def release(self, batch: int) -> None:
        """Free the compiled model of ``batch`` (another runtime serves it)."""
        self._by_batch.pop(batch, None)


#: lean runtime -> the class that runs its converted file
TICKS: dict[str, type[LiteRTTick] | type[OpenVINOTick]] = {
    "litert": LiteRTTick, "openvino": OpenVINOTick,
}


Tick = LiteRTTick | OpenVINOTick


def convert(name: str, tick_model: Any, model_file: Path) -> Tick:
    """The one-frame step of ``model_file`` on lean runtime ``name``: from the cache, else
    converted into it (into a temporary folder for this run when the cache is not
    writable)."""
    label = LEAN[name][2]
    path = converted_path(model_file, name)
    if path.is_file():
        return TICKS[name](path)
    log.info("model.runtime: converting %s's one-frame step for %s into %s",
             model_file, label, path)
    try:
        return TICKS[name](EXPORTS[name](tick_model, path))
    except OSError as error:  # the cache is not writable: convert for this run only
        log.info("model.runtime: cannot cache the conversion (%s); converting into a "
                 "temporary folder", error)
        with tempfile.TemporaryDirectory(prefix="forecaster-") as folder:
            return TICKS[name](EXPORTS[name](tick_model,
                                             Path(folder) / f"tick{SUFFIX[name]}"))
