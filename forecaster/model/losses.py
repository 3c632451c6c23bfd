"""Training losses. Tensors are (batch, time, H, W, channels); every function is per sample."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras


@keras.saving.register_keras_serializable(package="forecaster")
def gradient_difference(y_true: Any, y_pred: Any) -> Any:
    """Per-sample gradient difference loss: mean | |grad y_true| - |grad y_pred| | over H and W.

    Penalises blur: a prediction with softer edges than the target pays here even when
    its pixel error is small. Tensors are (B, T, H, W, C).
    """
    ops = keras.ops
    dy_true = ops.abs(y_true[:, :, 1:] - y_true[:, :, :-1])
    dy_pred = ops.abs(y_pred[:, :, 1:] - y_pred[:, :, :-1])
    dx_true = ops.abs(y_true[:, :, :, 1:] - y_true[:, :, :, :-1])
    dx_pred = ops.abs(y_pred[:, :, :, 1:] - y_pred[:, :, :, :-1])
    axes = (1, 2, 3, 4)
    return ops.mean(ops.abs(dy_true - dy_pred), axis=axes) + ops.mean(
        ops.abs(dx_true - dx_pred), axis=axes
    )


@keras.saving.register_keras_serializable(package="forecaster")
def l1_gdl(y_true: Any, y_pred: Any) -> Any:
    """Per-sample L1 pixel loss plus gradient difference loss."""
    l1 = keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=(1, 2, 3, 4))
    return l1 + gradient_difference(y_true, y_pred)


@keras.saving.register_keras_serializable(package="forecaster")
def mse(y_true: Any, y_pred: Any) -> Any:
    """Per-sample mean squared error."""
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=(1, 2, 3, 4))


LOSSES: dict[str, Callable[[Any, Any], Any]] = {"l1+gdl": l1_gdl, "mse": mse}


@keras.saving.register_keras_serializable(package="forecaster")
class PixelLoss(keras.losses.Loss):
    """One of :data:`LOSSES` by name, times ``scale``; averaged over the batch.

    ``scale = H * W`` turns a per-pixel mean into a per-frame sum: the VAE loss of the
    Keras example, ``reconstruction * H * W + KL``, where the KL term comes from the
    model's :class:`~forecaster.model.builders.Sampling` layer.
    """

    def __init__(
        self,
        kind: str = "mse",
        scale: float = 1.0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype: Any = None,
    ) -> None:
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r} (known: {', '.join(LOSSES)})")
        super().__init__(name=name or kind.replace("+", "_"), reduction=reduction, dtype=dtype)
        self.kind = kind
        self.scale = float(scale)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        loss = LOSSES[self.kind](y_true, y_pred)
        return loss * self.scale if self.scale != 1.0 else loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind, "scale": self.scale}
