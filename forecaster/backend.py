"""The Keras backend that runs the model: TensorFlow (the default) or JAX.

Keras 3 fixes its backend when it is first imported, from ``KERAS_BACKEND`` (else the
``backend`` key of ``~/.keras/keras.json``). Inference (the daemon's worker, replay, eval)
runs on either; training and ``bench`` need TensorFlow. :func:`prepare_backend` imports the
backend's library quietly before Keras and says which device runs the model, so that on
JAX nothing imports TensorFlow: the package then runs where TensorFlow is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from forecaster.errors import UsageError

#: the backends inference is supported on
INFERENCE_BACKENDS = ("tensorflow", "jax")


def keras_backend() -> str:
    """The backend Keras uses (or will use once imported) in this process, as Keras decides
    it: the imported Keras' own answer, else ``KERAS_BACKEND``, else ``keras.json``, else
    ``tensorflow``; without importing Keras."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config"):
        return str(keras.config.backend())
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    if "KERAS_HOME" in os.environ:
        folder = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = Path(os.path.expanduser("~"))
        folder = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    try:
        settings = json.loads((folder / "keras.json").read_text())
    except (OSError, ValueError):
        return "tensorflow"
    backend = settings.get("backend") if isinstance(settings, dict) else None
    return backend if isinstance(backend, str) and backend else "tensorflow"


def require_tensorflow(what: str) -> None:
    """UsageError when ``what`` (e.g. ``forecaster train``) would run on another backend."""
    backend = keras_backend()
    if backend != "tensorflow":
        raise UsageError(
            f"{what} runs on the TensorFlow backend only, but the Keras backend is {backend!r} "
            f"(from KERAS_BACKEND or ~/.keras/keras.json): run it with KERAS_BACKEND=tensorflow "
            f"(run, replay and eval also run on jax)"
        )


def prepare_backend() -> str:
    """Import the backend's library quietly (before Keras) and return the device that runs
    the model: ``"CPU"`` or ``"GPU (<name>)"``, with `` via JAX`` on JAX. UsageError for an unsupported backend."""
    backend = keras_backend()
    if backend == "tensorflow":
        from forecaster.logs import import_tensorflow_quietly

        return import_tensorflow_quietly()
    if backend == "jax":
        return _import_jax()
    raise UsageError(
        f"Keras backend {backend!r} (from KERAS_BACKEND or ~/.keras/keras.json) is not "
        f"supported: set KERAS_BACKEND to {' or '.join(INFERENCE_BACKENDS)} (jax needs the "
        f"extra: pip install 'forecaster[jax]')"
    )


def _import_jax() -> str:
    # a daemon shares the GPU with other programs: take memory as needed, not 75% at once
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # jax logs at INFO each accelerator platform it does not find
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        import jax
    except ImportError as exc:
        raise UsageError(
            f"the Keras backend is 'jax' but jax cannot be imported ({exc}): "
            f"pip install 'forecaster[jax]' (for an NVIDIA GPU: pip install 'jax[cuda12]')"
        ) from None
    _skip_tensorflow_probe()
    device = jax.devices()[0]
    if device.platform == "cpu":
        return "CPU via JAX"
    return f"{device.platform.upper()} ({device.device_kind}) via JAX"


def _skip_tensorflow_probe() -> None:
    """Keep Keras from importing TensorFlow on JAX.

    When it serializes a layer's config (as :func:`forecaster.model.builders.unrolled`
    does), Keras asks whether TensorFlow is importable, which imports it where it is
    installed: seconds and hundreds of MB that inference on JAX never uses. Keras is told it
    is not there, unless something imported it already.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        from keras.src.utils import module_utils
    except ImportError:  # another Keras layout: it may import TensorFlow, nothing breaks
        return
    lazy = getattr(module_utils, "tensorflow", None)
    if lazy is not None and getattr(lazy, "_available", False) is None:
        lazy._available = False
