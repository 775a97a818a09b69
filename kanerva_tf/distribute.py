"""Distribution strategies and the input of their replicas, on one machine or several.

  * `make_strategy(name)`: the `tf.distribute.Strategy` of `TrainConfig.strategy`.
  * `multi_worker_task()`: this process's place in the cluster of `TF_CONFIG` (`WorkerTask`).
  * `worker_dataset_fn(...)`: each worker's part of every global batch; `check_episodes`: the
    host-side check of every batch of episodes.
  * `WorkerLostError` and the collectives that keep workers in step (`broadcast_from_chief`,
    `any_worker_flag`), used by `kanerva_tf.training`.

On one machine, `strategy="mirrored"` splits every global batch of B episodes across its
devices (`kanerva_tf.training` documents the loss scaling).

Several machines (`strategy="multi_worker"`): `tf.distribute.MultiWorkerMirroredStrategy`
with the cluster of the `TF_CONFIG` environment variable (`multi_worker_task`), the same
loss and update as one process with as many replicas:

* Data: every worker runs the one-process input pipeline of global batches (same seed) and
  keeps only its own rows, `data.episode_dataset(part=(worker, workers))`; then each of its
  replicas takes its slice, so replica r of the cluster sees the episodes replica r of one
  process with R devices sees (`worker_dataset_fn`). The parts of a batch are disjoint
  slices of it: no two workers train on the same episodes of a step by accident.
* Files: the chief (task "chief", else worker 0) writes the workdir: config.json,
  checkpoints, metrics.jsonl, TensorBoard summaries and the export. Every other worker runs
  the very same loop -- evaluations, checkpoint saves and export included, so that all
  workers stay in step and take part in every save -- but writes into a temporary directory
  of its own that it deletes when it exits (TensorFlow's multi-worker guide). It never
  reads or writes the workdir: on a restart the chief restores the checkpoint and sends its
  values to every worker (`broadcast_from_chief`), so every worker resumes from the same
  checkpoint and the workdir only needs to be on the chief's machine.
* Faults: a worker that dies stops the others with `WorkerLostError` instead of a hang.
  TensorFlow detects it through the gRPC connection (at once on a kill -9 whose machine
  stays up) or through the coordination service's heartbeats, which
  MultiWorkerMirroredStrategy enables (`CoordinationServiceConfig.heartbeat_timeout_in_ms`,
  TensorFlow's default 10 s, not changed here); `TrainConfig.collective_timeout_seconds`
  (`CommunicationOptions(timeout_seconds=...)`) also bounds every collective, e.g. against a
  worker that is alive but stuck. Re-running every worker's command resumes from the last
  checkpoint. SIGTERM to any worker stops all of them at the same step with a checkpoint
  (`kanerva_tf.training.Interrupted`): the flag is combined across workers after every `tf.function` call.
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from kanerva_tf import data as data_lib
from kanerva_tf.model import check_image_values

__all__ = ["STRATEGIES", "COLLECTIVE_IMPLEMENTATIONS", "TF_CONFIG_EXAMPLE", "WorkerTask",
           "WorkerLostError", "multi_worker_task", "make_strategy", "worker_dataset_fn",
           "check_episodes", "broadcast_from_chief", "any_worker_flag", "PEER_ERRORS",
           "error_cause"]

STRATEGIES = ("mirrored", "one_device", "default", "multi_worker")
# tf.distribute.experimental.CommunicationImplementation of the multi-worker all-reduce.
COLLECTIVE_IMPLEMENTATIONS = ("auto", "ring", "nccl")

# What TF_CONFIG looks like on the first of two machines (the second: "index": 1).
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


@dataclasses.dataclass(frozen=True)
class WorkerTask:
  """This process's place in the cluster of `TF_CONFIG`.

  Attributes:
    type, index: its task, e.g. ("worker", 1).
    worker: its index among all workers, chief first (`tf.distribute.InputContext`'s
      input_pipeline_id).
    num_workers: the cluster's "chief" and "worker" tasks.
    is_chief: the task "chief", else "worker" 0: the one that writes the workdir.
  """
  type: str
  index: int
  worker: int
  num_workers: int
  is_chief: bool


def _tf_config_error(problem):
  return ValueError(
      f"strategy 'multi_worker' reads its cluster from the TF_CONFIG environment variable: "
      f"{problem}. Set TF_CONFIG on every worker to the same cluster and that worker's task, "
      f"e.g. for two machines TF_CONFIG='{TF_CONFIG_EXAMPLE}' on the first and the same with "
      '"index": 1 on the second (README, "Training on several machines").')


def multi_worker_task(tf_config=None):
  """Parses and checks `TF_CONFIG` (default: the environment variable's value).

  Returns:
    `WorkerTask`.

  Raises:
    ValueError: TF_CONFIG is not set, not JSON, or has no usable "cluster" and "task"; the
      message shows its expected form (`TF_CONFIG_EXAMPLE`).
  """
  raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
  if not raw.strip():
    raise _tf_config_error("it is not set")
  try:
    config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise _tf_config_error(f"it is not JSON ({e}): {raw!r}") from None
  cluster = config.get("cluster") if isinstance(config, dict) else None
  task = config.get("task") if isinstance(config, dict) else None
  if not isinstance(cluster, dict) or not cluster:
    raise _tf_config_error(f'it has no "cluster" of workers: {raw!r}')
  if not isinstance(task, dict) or "type" not in task or "index" not in task:
    raise _tf_config_error(f'it has no "task" with a "type" and an "index": {raw!r}')
  other = sorted(set(cluster) - {"chief", "worker"})
  if other:
    raise _tf_config_error(f"its cluster has {other} tasks; only \"chief\" and \"worker\" "
                           f"tasks train together: {raw!r}")
  for job, addresses in cluster.items():
    if (not isinstance(addresses, list) or not addresses or
        not all(isinstance(a, str) and ":" in a for a in addresses)):
      raise _tf_config_error(f'cluster "{job}" must be a list of "host:port" strings: {raw!r}')
  if len(cluster.get("chief", [])) > 1:
    raise _tf_config_error(f'the cluster has more than one "chief": {raw!r}')
  task_type, index = task["type"], task["index"]
  if (task_type not in cluster or isinstance(index, bool) or not isinstance(index, int) or
      not 0 <= index < len(cluster[task_type])):
    raise _tf_config_error(f"its task {task!r} is not one of the cluster's: {raw!r}")
  chiefs = len(cluster.get("chief", []))
  return WorkerTask(type=task_type, index=index,
                    worker=0 if task_type == "chief" else chiefs + index,
                    num_workers=chiefs + len(cluster.get("worker", [])),
                    is_chief=task_type == "chief" or (index == 0 and not chiefs))


_MULTI_WORKER_STRATEGY = {}  # collective ops can be configured once per process


def make_strategy(name, *, collective_timeout_seconds=0.0, collective_implementation="auto"):
  """The `tf.distribute.Strategy` named by `TrainConfig.strategy`.

  "multi_worker" builds `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG` (the
  default `TFConfigClusterResolver`) with `CommunicationOptions(timeout_seconds=
  collective_timeout_seconds or None, implementation=collective_implementation)`. It waits
  until every worker of the cluster has started. TensorFlow allows it once per process,
  before TensorFlow has run anything: later calls with the same options return the same
  strategy.

  Raises:
    ValueError: an unknown name; "multi_worker" without a usable TF_CONFIG (at once) or with
      other options than the process's strategy.
    RuntimeError: "multi_worker" after TensorFlow has started running in the process.
  """
  if name == "multi_worker":
    multi_worker_task()  # fails at once, with the expected form, without a usable TF_CONFIG
    if collective_implementation not in COLLECTIVE_IMPLEMENTATIONS:
      raise ValueError(f"collective_implementation must be one of {COLLECTIVE_IMPLEMENTATIONS}; "
                       f"got {collective_implementation!r}.")
    key = (float(collective_timeout_seconds), collective_implementation)
    if _MULTI_WORKER_STRATEGY:
      (old, strategy), = _MULTI_WORKER_STRATEGY.items()
      if old != key:
        raise ValueError(f"This process already has a MultiWorkerMirroredStrategy with "
                         f"(collective_timeout_seconds, collective_implementation)={old}; "
                         f"TensorFlow allows one per process, so {key} needs a new process.")
      return strategy
    implementation = getattr(tf.distribute.experimental.CommunicationImplementation,
                             collective_implementation.upper())
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(collective_timeout_seconds) or None,
        implementation=implementation)
    try:
      strategy = tf.distribute.MultiWorkerMirroredStrategy(
          cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
          communication_options=options)
    except RuntimeError as e:
      if "program startup" not in str(e):
        raise
      raise RuntimeError(
          "strategy 'multi_worker' must be created before TensorFlow runs anything in the "
          "process (TensorFlow configures its collective operations at startup): create it "
          "first (train_and_evaluate and train.py do), in a fresh process.") from e
    _MULTI_WORKER_STRATEGY[key] = strategy
    return strategy
  gpus = tf.config.list_logical_devices("GPU")
  if name == "mirrored":
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "default":
    return tf.distribute.get_strategy()
  raise ValueError(f"strategy must be one of {STRATEGIES}; got {name!r}.")


def check_episodes(dataset, what="training batch"):
  """`dataset` of float32 episodes `[B, T, H, W, D]`, each batch checked on the host (in
  the tf.data pipeline, off the training step's graph) to be finite and in [0, 1]
  (`kanerva_tf.model.check_image_values`): a bad batch fails its `next()` with
  `tf.errors.InvalidArgumentError` "<what> contains NaN or Inf." or "... values must be in
  [0, 1]"."""
  return dataset.map(lambda x: check_image_values(x, what, "kanerva_tf.training"),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class WorkerLostError(RuntimeError):
  """Multi-worker training lost a worker (it died, or a collective timed out): every worker
  must be restarted, which resumes from the last checkpoint."""


# What a collective raises when a peer is gone (connection reset, missed heartbeats, a timeout).
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.AbortedError, tf.errors.CancelledError)


def error_cause(error, limit=400):
  """The informative part of a TensorFlow error's message, on one line: without the
  "Graph execution error" header and the traceback of the op that raised it."""
  lines = [line.strip() for line in (getattr(error, "message", None) or str(error)).splitlines()]
  kept = [line for line in lines if line and not line.startswith(("File ", "[[", "Detected at"))
          and line not in ("Graph execution error:",)]
  text = " ".join(kept[:3])
  return text[:limit] + ("..." if len(text) > limit else "")


def worker_dataset_fn(dataset, split, *, batch_size, episode_length, seed, **kwargs):
  """The `dataset_fn(input_context)` of `strategy.distribute_datasets_from_function`.

  Input pipeline p of P (a worker) yields, for every global batch i of B episodes of
  `data.episode_dataset(..., seed=seed)`, its part p, rows [p B/P, (p + 1) B/P), cut into
  one batch of B / replicas per local replica, in replica order. So the episodes of replica
  r of the whole cluster are those of replica r of one process with as many replicas
  (`experimental_distribute_dataset` of the same dataset), the parts of a batch are disjoint,
  and each worker's stream is a pure function of (seed, i, p).
  """
  def dataset_fn(input_context):
    per_replica = input_context.get_per_replica_batch_size(batch_size)
    part = (input_context.input_pipeline_id, input_context.num_input_pipelines)
    ds = data_lib.episode_dataset(dataset, split, batch_size=batch_size,
                                  episode_length=episode_length, seed=seed, part=part, **kwargs)
    if per_replica * input_context.num_input_pipelines != batch_size:  # several local replicas
      ds = ds.unbatch().batch(per_replica, drop_remainder=True)
    return check_episodes(ds)  # the training step does not check its input (check_inputs)

  return dataset_fn


def broadcast_from_chief(strategy, variables):
  """Sets every worker's `variables` to the chief's (replica 0's): an all-reduce per dtype
  in which the other replicas contribute zeros, so the sum is the chief's value exactly."""
  groups = {}
  for v in variables:
    groups.setdefault(tf.as_dtype(v.dtype).name, []).append(v)
  names = sorted(groups)

  @tf.function
  def chief_values():
    def replica_fn():
      is_chief = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
      sums = []
      for name in names:
        flat = tf.concat([tf.reshape(tf.convert_to_tensor(v), [-1]) for v in groups[name]], 0)
        sums.append(tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.where(is_chief, flat, tf.zeros_like(flat))))
      return sums
    return strategy.run(replica_fn)

  for name, total in zip(names, chief_values()):
    flat = strategy.experimental_local_results(total)[0]
    offset = 0
    for v in groups[name]:
      size = int(np.prod(v.shape))
      v.assign(tf.reshape(flat[offset:offset + size], v.shape))
      offset += size


def any_worker_flag(strategy):
  """A function(flag: bool) -> bool: whether any worker passed True (an all-reduce)."""
  @tf.function
  def any_flag(flag):
    per_replica = strategy.run(lambda: tf.cast(flag, tf.float32))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None) > 0

  return lambda flag: bool(any_flag(tf.constant(bool(flag))))
