"""The next-frame model: builders, the stateful stepper, the artifact format, the fitting loops.

Importing this package is cheap: TensorFlow and Keras load only when a submodule that
needs them is imported (``builders``, ``step``, ``fitting``) or a model is loaded.
The ``train`` command, which also calibrates the detection, is
:mod:`forecaster.offline.train`.
``artifact.read_card`` reads a model's card without loading TensorFlow at all.
"""

from __future__ import annotations

from forecaster.sources.frame_size import MIN_FRAME_SIDE, frame_size_fits

#: the architectures of :data:`forecaster.model.builders.SPECS`, by name (here, so that the
#: command line lists them without importing Keras)
ARCH_NAMES: tuple[str, ...] = (
    "convlstm-ae", "seed-convlstm", "seed-convlstm-pool", "convlstm-vae", "conv3d-vae",
)
#: the pixel losses of :data:`forecaster.model.losses.LOSSES`, by name
LOSS_NAMES: tuple[str, ...] = ("mse", "l1+gdl")
#: window: shuffled clips; stateful: whole videos in consecutive chunks, state carried
TRAINING_MODES: tuple[str, ...] = ("window", "stateful")

DEFAULT_ARCH = "convlstm-ae"
DEFAULT_WINDOW = 10

# The training recipe ``forecaster train`` runs when no option is given: the mse loss
# (with L1 + gradient-difference the residual model stayed at "nothing moves", the error
# of repeating the last frame), Adam at 1e-3, early stopping after 10 epochs without a
# better validation loss, at most 80 epochs. On 12 of Ped2's 16 training videos it reaches
# 0.42-0.45x the error of repeating the last frame over 3 seeds (benchmarks/ped2.py).
DEFAULT_LOSS = "mse"
DEFAULT_EPOCHS = 80
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_PATIENCE = 10
#: a model whose error on held-out normal frames is above this fraction of the error of
#: repeating the last frame has learned next to nothing: ``train`` warns
WEAK_MODEL_RATIO = 0.9


__all__ = ["ARCH_NAMES", "DEFAULT_ARCH", "DEFAULT_EPOCHS", "DEFAULT_LEARNING_RATE",
           "DEFAULT_LOSS", "DEFAULT_PATIENCE", "DEFAULT_WINDOW", "LOSS_NAMES", "MIN_FRAME_SIDE",
           "TRAINING_MODES", "WEAK_MODEL_RATIO", "frame_size_fits"]
