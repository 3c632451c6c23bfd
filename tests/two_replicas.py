"""Run in a fresh process by tests/test_distributed.py: training under MirroredStrategy with
two replicas on two logical CPU devices (which must be set up before TensorFlow starts).

``python tests/two_replicas.py OUT_DIR``: writes ``OUT_DIR/result.json`` with the
stateful reset check (each replica's chunk losses) and two window-mode models,
``two.keras`` (two replicas) and ``one.keras`` (one process, no strategy).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402
import numpy as np  # noqa: E402

from forecaster.model.batches import StatefulGroups  # noqa: E402
from forecaster.model.builders import build_model  # noqa: E402
from forecaster.model.distributed import (  # noqa: E402
    DistributedTrainer,
    Distribution,
    make_distribution,
)
from forecaster.model.losses import PixelLoss  # noqa: E402
from forecaster.offline.train import TrainSettings, train_command  # noqa: E402


def stateful_resets(distribution: Distribution) -> dict[str, list[list[float]]]:
    """Each replica's chunk losses (learning rate 0: the weights stay) of group 2 after
    group 1, of group 2 alone, and of group 2 after group 1 with no reset between."""
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (13, 16, 16), dtype=np.uint8) for _ in range(4)]
    both = StatefulGroups(videos, batch_size=2, chunk=4)  # (0, 1) then (2, 3)
    alone = StatefulGroups(videos[2:], batch_size=2, chunk=4)
    assert both.num_chunks == 6 and alone.num_chunks == 3
    keras.utils.set_random_seed(0)
    with distribution.strategy.scope():
        model = build_model("convlstm-ae", 16, 16)
        delta = model.get_layer("delta")  # starts at zero: make the output depend on the state
        kernel, bias = delta.get_weights()
        delta.set_weights([rng.normal(0, 0.3, kernel.shape).astype(np.float32), bias])
        model.compile(optimizer=keras.optimizers.Adam(0.0), loss=PixelLoss("mse"))
    trainer = DistributedTrainer(model, distribution, batch=2, stateful=True)

    def per_replica(chunks: Any) -> list[list[float]]:
        seen: list[list[float]] = []
        trainer.run_stateful(chunks, train=True,
                             on_values=lambda _, v: seen.append(
                                 [float(x) for x in trainer.local_values(v)]))
        return seen

    leaky = [(x, y, i == 0) for i, (x, y, _) in enumerate(both)]
    return {"after": per_replica(both)[3:], "fresh": per_replica(alone),
            "leaky": per_replica(iter(leaky))[3:]}


def main() -> None:
    out = Path(sys.argv[1])
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    distribution = make_distribution(tf.distribute.MirroredStrategy(devices))
    result: dict[str, object] = {"replicas": distribution.replicas,
                                 "resets": stateful_resets(distribution)}
    data = [f"synthetic:?anomaly_rate=0&seed={seed}&frames=24" for seed in range(3)]
    settings = TrainSettings(arch="convlstm-ae", mode="window", epochs=1, size=(16, 16),
                             batch_size=5, clip=6, seed=3, progress=False,
                             checkpoint_dir=out / "ckpt-two", tensorboard=out / "tb-two")
    train_command(data, out / "two.keras", settings, make_distribution(distribution.strategy))
    train_command(data, out / "one.keras",
                  TrainSettings(**{**settings.__dict__, "checkpoint_dir": out / "ckpt-one",
                                   "tensorboard": out / "tb-one"}))
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
