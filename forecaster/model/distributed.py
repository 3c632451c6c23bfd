"""Training on several GPUs or machines with TensorFlow's ``tf.distribute``.

``forecaster train --distributed`` trains under a strategy: without ``TF_CONFIG``,
``MirroredStrategy`` over the GPUs of this machine (one replica on the CPU when there is
none); with ``TF_CONFIG`` (the cluster and this process's task, as TensorFlow defines it),
``MultiWorkerMirroredStrategy``: every worker runs the same command on its own machine,
and the gradients are summed across all replicas of all workers (gRPC between machines).

The loop is data-parallel and synchronous: every worker reads the same videos and builds
the same global batches in the same order (same seed); each replica takes its rows of a
batch, dealt round-robin (row ``i`` goes to replica ``i mod R``, ``R`` replicas in all),
padded with weight-zero rows to a fixed per-replica batch of ``ceil(B / R)``. A replica's
loss is the sum of its rows' losses divided by the rows of the whole batch, so the summed
gradients are the gradient of the batch's mean loss: the very step a single process takes
on the same batch, up to float rounding (sums in another order).

In stateful mode the rows of a batch are the videos of a group: video ``i`` of the group
(``batch_size`` consecutive videos) goes to replica ``i mod R``, and each replica carries
the recurrent state of its videos from chunk to chunk and resets it to zeros on every
replica when a new group starts. Validation runs the same way, summed across replicas,
so every worker sees the same validation loss and stops early at the same epoch.

Only the chief (task ``chief``, or ``worker`` 0 when the cluster has no chief) writes the
model, its checkpoints and TensorBoard logs; the other workers checkpoint into a temporary
folder (which :func:`forecaster.model.fitting.fit` needs to restore the best weights),
removed at the end.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forecaster.endpoints import MAX_PORT
from forecaster.errors import ForecasterError, UsageError

if TYPE_CHECKING:
    import keras

log = logging.getLogger("forecaster.train")

TF_CONFIG = "TF_CONFIG"
#: task types a worker of this loop may have (TensorFlow's parameter servers and
#: evaluators belong to other strategies)
TASK_TYPES = ("chief", "worker")


class WorkerLost(ForecasterError):
    """A step shared with the other workers failed: one of them stopped or is unreachable."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"distributed training stopped: a worker stopped or cannot be "
                         f"reached ({reason}); stop every worker and start them all again")


def _reason(message: str) -> str:
    """The telling line of a collective op's error message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Collective ops is aborted by"):
            return line
    return lines[0] if lines else "no reason given"


# --- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterTask:
    """``TF_CONFIG`` read and checked: the cluster's addresses and this process's task."""

    chief: tuple[str, ...]
    workers: tuple[str, ...]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        """Processes in the cluster (the chief counts as a worker)."""
        return len(self.chief) + len(self.workers)

    @property
    def is_chief(self) -> bool:
        """This process writes the outputs: the ``chief`` task, or ``worker`` 0 without one."""
        return self.task_type == "chief" or (not self.chief and self.task_index == 0)

    @property
    def rank(self) -> int:
        """This process's place among all workers, the chief first (0)."""
        return self.task_index if self.task_type == "chief" else len(self.chief) + self.task_index


#: a host name: dot-separated labels of letters, digits and inner hyphens
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def address_problem(address: object) -> str | None:
    """What is wrong with a cluster address (``host:port``, ``[v6]:port``); None if right."""
    if not isinstance(address, str):
        return f"{_short(address)} is not a \"host:port\" string"
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        return f"{address!r} is not \"host:port\""
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= MAX_PORT:
        return f"{address!r}: the port must be a number from 1 to {MAX_PORT}, got {port!r}"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{address!r}: {host} is not an IPv6 address"
        return None
    if not host.isascii() or not _HOST_NAME.match(host):
        return (f"{address!r}: the host must be a host name or an IP address "
                f"(an IPv6 one in brackets), got {host!r}")
    return None


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_tf_config(text: str) -> ClusterTask:
    """Check ``TF_CONFIG`` (JSON: ``{"cluster": {"worker": ["host:port", ...]}, "task":
    {"type": "worker", "index": 0}}``); UsageError naming what is wrong and the value."""
    where = f"{TF_CONFIG}={_short(text, 200)}"
    if not text.strip():
        raise UsageError(f"{TF_CONFIG} is set but empty: unset it to train on this machine's "
                         f"GPUs, or give the cluster and this worker's task")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{TF_CONFIG} is not JSON ({error.msg} at character {error.pos}): "
                         f"{where}") from None
    except RecursionError:
        raise UsageError(f"{TF_CONFIG} is nested too deeply to be a cluster: {where}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{TF_CONFIG} must be a JSON object with \"cluster\" and \"task\": "
                         f"{where}")
    cluster, task = data.get("cluster"), data.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise UsageError(f"{TF_CONFIG} needs \"cluster\", an object such as "
                         f"{{\"worker\": [\"host1:12345\", \"host2:12345\"]}}: {where}")
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise UsageError(f"{TF_CONFIG} cluster: unsupported task type {unknown[0]!r} (this "
                         f"training has {' and '.join(TASK_TYPES)} tasks only): {where}")
    addresses: dict[str, tuple[str, ...]] = {}
    for kind in TASK_TYPES:
        listed = cluster.get(kind, [])
        if not isinstance(listed, list):
            raise UsageError(f"{TF_CONFIG} cluster.{kind} must be a list of \"host:port\" "
                             f"strings, got {_short(listed)}")
        for address in listed:
            problem = address_problem(address)
            if problem is not None:
                raise UsageError(f"{TF_CONFIG} cluster.{kind}: {problem}")
        addresses[kind] = tuple(listed)
    everyone = addresses["chief"] + addresses["worker"]
    if len(set(everyone)) < len(everyone):
        twice = next(a for a in everyone if everyone.count(a) > 1)
        raise UsageError(f"{TF_CONFIG} cluster lists {twice!r} more than once: {where}")
    if len(addresses["chief"]) > 1:
        raise UsageError(f"{TF_CONFIG} cluster.chief has {len(addresses['chief'])} addresses; "
                         f"there is at most one chief: {where}")
    if not addresses["chief"] and not addresses["worker"]:
        raise UsageError(f"{TF_CONFIG} cluster lists no worker: {where}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UsageError(f"{TF_CONFIG} needs \"task\": {{\"type\": \"worker\", \"index\": N}} "
                         f"(this process's place in the cluster): {where}")
    kind, index = task["type"], task["index"]
    if kind not in TASK_TYPES:
        raise UsageError(f"{TF_CONFIG} task.type must be one of {', '.join(TASK_TYPES)}, "
                         f"got {_short(kind)}")
    if isinstance(index, bool) or not isinstance(index, int) or not (
        0 <= index < len(addresses[kind])
    ):
        raise UsageError(f"{TF_CONFIG} task.index must be an integer from 0 to "
                         f"{len(addresses[kind]) - 1} (cluster.{kind} has "
                         f"{len(addresses[kind])} addresses), got {_short(index)}")
    return ClusterTask(addresses["chief"], addresses["worker"], kind, index)


@dataclass
class Distribution:
    """A ``tf.distribute`` strategy and this process's part in it."""

    strategy: Any  # tf.distribute.Strategy
    is_chief: bool = True
    rank: int = 0
    num_workers: int = 1
    description: str = ""
    #: the strategy's name as TensorFlow's documentation gives it
    name: str = ""
    #: a worker's checkpoint folder, when it is not the chief (removed at the end)
    scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def replicas(self) -> int:
        """Replicas in sync, all workers together."""
        return int(self.strategy.num_replicas_in_sync)

    def card(self) -> dict[str, Any]:
        """What the model card records of the run's distribution."""
        return {"strategy": self.name or type(self.strategy).__name__,
                "workers": self.num_workers,
                "replicas": self.replicas}


def announce_cluster(env: Mapping[str, str] | None = None, *,
                     peer_timeout_s: float | None = None,
                     received: list[int] | None = None) -> ClusterTask | None:
    """Check ``TF_CONFIG`` (UsageError) before TensorFlow loads, log what this worker is
    about to wait for, and with ``peer_timeout_s`` wait that long at most for the other
    workers to listen (:func:`forecaster.model.peers.wait_for_peers`); None without
    ``TF_CONFIG``. ``received``: see :func:`~forecaster.model.peers.wait_for_peers`."""
    text = (os.environ if env is None else env).get(TF_CONFIG)
    if text is None:
        return None
    task = parse_tf_config(text)
    everyone = task.chief + task.workers
    if peer_timeout_s is None:
        log.info("%s %d of %d workers: waiting for all of them to start (no time limit): %s",
                 task.task_type, task.task_index, task.num_workers, ", ".join(everyone))
        return task
    from forecaster.model.peers import wait_for_peers

    own = everyone[task.rank]
    wait_for_peers(own, [a for a in everyone if a != own], peer_timeout_s,
                   f"{task.task_type} {task.task_index} of {task.num_workers} workers: waiting "
                   f"for all of them to start (at most {peer_timeout_s:g} s): "
                   f"{', '.join(everyone)}", received)
    return task


def make_distribution(strategy: Any = None, env: Mapping[str, str] | None = None) -> Distribution:
    """The distribution of ``forecaster train --distributed``, or one around ``strategy``.

    With ``TF_CONFIG`` in ``env`` (default: the process's environment): checked, then
    ``MultiWorkerMirroredStrategy``; otherwise ``MirroredStrategy`` over the local GPUs.
    Create it before TensorFlow runs any op (a multi-worker strategy configures the runtime).
    """
    import tensorflow as tf

    environ = os.environ if env is None else env
    text = environ.get(TF_CONFIG, "").strip()
    if strategy is None:
        if text:
            task = parse_tf_config(text)
            try:
                strategy = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as error:  # TensorFlow's runtime started already
                raise UsageError(f"{TF_CONFIG}: cannot start multi-worker training in this "
                                 f"process ({error}); start it in a fresh process") from None
            role = "chief" if task.is_chief else "not the chief"
            return Distribution(
                strategy, task.is_chief, task.rank, task.num_workers,
                f"MultiWorkerMirroredStrategy: {task.task_type} {task.task_index} ({role}) of "
                f"{task.num_workers} workers, {strategy.num_replicas_in_sync} replicas in sync",
                name="MultiWorkerMirroredStrategy",
            )
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.MirroredStrategy()
        where = (f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}" if gpus
                 else "no GPU visible: one replica on the CPU")
        return Distribution(strategy, description=f"MirroredStrategy on this machine, {where}",
                            name="MirroredStrategy")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and text:
        task = parse_tf_config(text)
        return Distribution(strategy, task.is_chief, task.rank, task.num_workers,
                            f"{type(strategy).__name__}: {task.task_type} {task.task_index}")
    return Distribution(strategy, description=f"{type(strategy).__name__}, "
                        f"{strategy.num_replicas_in_sync} replicas")


def worker_folders(distribution: Distribution, checkpoints: Path,
                   log_dir: Path | None) -> tuple[Path, Path | None]:
    """Where this worker checkpoints and logs: the chief, in ``checkpoints`` and ``log_dir``;
    the others, in a temporary folder and nowhere (TensorFlow's pattern: all workers save
    alike, only the chief's files are kept)."""
    log.info("distributed training: %s", distribution.description)
    if distribution.is_chief:
        return checkpoints, log_dir
    distribution.scratch = tempfile.TemporaryDirectory(
        prefix=f"forecaster-worker{distribution.rank}-")
    return Path(distribution.scratch.name), None


def finish_worker(distribution: Distribution, model: keras.Model, arch: str, height: int,
                  width: int, window: int) -> keras.Model | None:
    """After training: on the chief, the trained model as a plain one (its weights copied
    out of the strategy's variables) to calibrate and write; elsewhere None, the worker's
    temporary folder removed."""
    from forecaster.model.builders import build_model

    if not distribution.is_chief:
        if distribution.scratch is not None:
            distribution.scratch.cleanup()
            distribution.scratch = None
        log.info("worker %d of %d done; the chief calibrates and writes the model",
                 distribution.rank, distribution.num_workers)
        return None
    plain = build_model(arch, height, width, window)
    plain.set_weights(model.get_weights())
    return plain


# --- rows to replicas -------------------------------------------------------------------------


def deal_rows(rows: int, replicas: int, per_replica: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i`` of a batch of ``rows`` goes to replica ``i mod replicas``, each replica's
    list padded to ``per_replica`` with row 0 at weight zero.

    Returns the row indices (replicas, per_replica) and their weights (1 real, 0 padding).
    """
    if rows < 1 or per_replica * replicas < rows:
        raise ValueError(f"cannot deal {rows} rows to {replicas} replicas of {per_replica}")
    index = np.zeros((replicas, per_replica), np.int64)
    weight = np.zeros((replicas, per_replica), np.float32)
    for replica in range(replicas):
        mine = np.arange(replica, rows, replicas)
        index[replica, : len(mine)] = mine
        weight[replica, : len(mine)] = 1.0
    return index, weight


# --- the trainer ------------------------------------------------------------------------------


class DistributedTrainer:
    """One model's training and validation steps under a strategy, in window or stateful mode.

    ``stateful``: the recurrent model's step model runs chunk by chunk with each replica's
    state carried (gradients stopped between chunks) and reset when a new group starts;
    otherwise the sequence model runs on clips. ``batch``: the global batch (rows per step).
    """

    def __init__(self, model: keras.Model, distribution: Distribution, *, batch: int,
                 stateful: bool) -> None:
        import keras
        import tensorflow as tf

        from forecaster.model.step import build_step_model

        self.distribution = distribution
        strategy = self.strategy = distribution.strategy
        self.replicas = distribution.replicas
        self.per_replica = math.ceil(batch / self.replicas)
        self.stateful = stateful
        with strategy.scope():
            net = build_step_model(model) if stateful else model
        self.net = net
        self.state_shapes = ([tuple(int(d) for d in t.shape[1:]) for t in net.inputs[1:]]
                             if stateful else [])
        loss, optimizer = model.loss, model.optimizer
        if optimizer is None or loss is None:
            raise UsageError("compile the model before distributed training")
        if not optimizer.built:
            with strategy.scope():
                optimizer.build(model.trainable_variables)
        variables = net.trainable_variables
        per_sample = loss.call if isinstance(loss, keras.losses.Loss) else loss
        replicas = float(self.replicas)

        def forward(x: Any, y: Any, w: Any, rows: Any, states: list[Any],
                    training: bool) -> tuple[Any, list[Any]]:
            outputs = net([x, *states] if stateful else x, training=training)
            prediction = outputs[0] if stateful else outputs
            value = tf.reduce_sum(w * tf.cast(per_sample(y, prediction), tf.float32)) / rows
            if net.losses:  # the VAEs' KL term: each replica's mean over its rows
                value = value + tf.add_n([tf.cast(v, tf.float32) for v in net.losses]) / replicas
            return value, list(outputs[1:]) if stateful else []

        def train_step(x: Any, y: Any, w: Any, rows: Any,
                       states: list[Any]) -> tuple[Any, list[Any]]:
            with tf.GradientTape() as tape:
                value, new_states = forward(x, y, w, rows, states, True)
            gradients = tape.gradient(value, variables)
            optimizer.apply_gradients(zip(gradients, variables, strict=True))  # summed
            return value, [tf.stop_gradient(s) for s in new_states]

        def eval_step(x: Any, y: Any, w: Any, rows: Any,
                      states: list[Any]) -> tuple[Any, list[Any]]:
            return forward(x, y, w, rows, states, False)

        def distributed(step: Callable[..., Any]) -> Callable[..., Any]:
            def run(x: Any, y: Any, w: Any, rows: Any, states: list[Any]) -> Any:
                values, new_states = strategy.run(step, args=(x, y, w, rows, states))
                total = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)
                return total, values, new_states

            return tf.function(run, reduce_retracing=True)

        self._train = distributed(train_step)
        self._eval = distributed(eval_step)

    def _per_replica(self, make: Callable[[int], np.ndarray]) -> Any:
        """A distributed value: ``make(replica)`` on each of this worker's replicas."""
        import tensorflow as tf

        return self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(make(context.replica_id_in_sync_group)))

    def zeros(self) -> list[Any]:
        """The initial state on every replica: zeros."""
        def zeros_of(shape: tuple[int, ...]) -> Callable[[int], np.ndarray]:
            return lambda _: np.zeros((self.per_replica, *shape), np.float32)

        return [self._per_replica(zeros_of(shape)) for shape in self.state_shapes]

    def local_values(self, value: Any) -> list[np.ndarray]:
        """A distributed value's arrays on this worker's replicas."""
        return [np.asarray(v) for v in self.strategy.experimental_local_results(value)]

    def step(self, x: np.ndarray, y: np.ndarray, states: list[Any], *,
             train: bool) -> tuple[float, Any, list[Any]]:
        """One global batch (x, y) of any number of rows up to the batch: its mean loss
        (summed across replicas), each replica's share, and the states after it."""
        import tensorflow as tf

        rows = len(x)
        index, weight = deal_rows(rows, self.replicas, self.per_replica)
        inputs = self._per_replica(lambda r: x[index[r]])
        targets = self._per_replica(lambda r: y[index[r]])
        weights = self._per_replica(lambda r: weight[r])
        fn = self._train if train else self._eval
        try:
            total, values, new_states = fn(inputs, targets, weights,
                                           tf.constant(float(rows), tf.float32), states)
            return float(total), values, list(new_states)
        except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                tf.errors.DeadlineExceededError) as error:
            raise WorkerLost(_reason(error.message)) from None

    def run_stateful(
        self,
        chunks: Iterator[tuple[np.ndarray, np.ndarray, bool]] | Any,
        *,
        train: bool,
        on_chunk: Callable[[int, float, int], None] | None = None,
        on_values: Callable[[int, Any], None] | None = None,
    ) -> list[float]:
        """One pass over stateful chunks (x, y, new group?); the loss of every chunk.
        ``on_values(index, per-replica losses)`` sees each replica's share."""
        losses: list[float] = []
        states: list[Any] = []
        for index, (x, y, reset) in enumerate(chunks):
            if reset or not states:
                states = self.zeros()
            value, values, states = self.step(x, y, states, train=train)
            losses.append(value)
            if on_values is not None:
                on_values(index, values)
            if on_chunk is not None:
                on_chunk(index, value, int(x.shape[0] * x.shape[1]))
        return losses

    def run_windows(
        self, batches: Any, *, train: bool,
        on_batch: Callable[[int, float, int], None] | None = None,
    ) -> float:
        """One pass over window batches; the mean loss per clip."""
        total, count = 0.0, 0
        for index in range(len(batches)):
            x, y = batches[index]
            value, _, _ = self.step(x, y, [], train=train)
            total += value * len(x)
            count += len(x)
            if on_batch is not None:
                on_batch(index, total / count, int(x.shape[0] * x.shape[1]))
        return total / count if count else math.nan


def distributed_epochs(
    model: keras.Model, options: Any, train: Any, val: Any, distribution: Distribution
) -> tuple[Callable[[int], dict[str, float]], int]:
    """The epoch function of :func:`forecaster.model.fitting.fit` under ``distribution``
    (``options.mode``: window or stateful), and the training frames per epoch."""
    import time

    from forecaster.model.batches import Progress, StatefulGroups, WindowBatches

    stateful = options.mode == "stateful"
    if stateful:
        assert isinstance(train, StatefulGroups) and isinstance(val, StatefulGroups)
        batch, frames = max(train.batch, val.batch), train.frames_per_epoch
    else:
        assert isinstance(train, WindowBatches) and isinstance(val, WindowBatches)
        batch, frames = max(train.batch_size, val.batch_size), len(train.starts) * train.length
    trainer = DistributedTrainer(model, distribution, batch=batch, stateful=stateful)
    log.info("%s; global batch %d, %d per replica", distribution.description, batch,
             trainer.per_replica)

    def run_epoch(epoch: int) -> dict[str, float]:
        steps = train.num_chunks if stateful else len(train)
        progress = Progress(options.progress and distribution.is_chief, epoch, options.epochs,
                             steps)
        began = time.perf_counter()
        if stateful:
            losses = trainer.run_stateful(train, train=True, on_chunk=progress.update)
            loss = float(np.mean(losses)) if losses else math.nan
            train_seconds = time.perf_counter() - began
            val_losses = trainer.run_stateful(val, train=False)
            val_loss = float(np.mean(val_losses)) if val_losses else math.nan
        else:
            train.set_epoch(epoch)
            loss = trainer.run_windows(
                train, train=True,
                on_batch=lambda i, mean, n: progress.update(i, mean, n, mean=True))
            train_seconds = time.perf_counter() - began
            val_loss = trainer.run_windows(val, train=False)
        ended = time.perf_counter()
        return {"loss": loss, "val_loss": val_loss, "seconds": ended - began,
                "train_seconds": train_seconds,
                "frames_per_s": frames / max(train_seconds, 1e-9)}

    return run_epoch, frames
