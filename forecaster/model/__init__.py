"""The next-frame model: builders, the stateful stepper, the artifact format, training.

Importing this package is cheap: TensorFlow and Keras load only when a submodule that
needs them is imported (``builders``, ``step``, ``train``) or a model is loaded.
``artifact.read_card`` reads a model's card without loading TensorFlow at all.
"""

from __future__ import annotations

DEFAULT_ARCH = "convlstm-ae"
DEFAULT_WINDOW = 10

__all__ = ["DEFAULT_ARCH", "DEFAULT_WINDOW"]
