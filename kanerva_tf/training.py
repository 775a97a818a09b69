"""Custom distributed training loop: MirroredStrategy, checkpoints, summaries, export.

`train_and_evaluate(model_config, train_config, workdir)` is the whole job; `train.py` only
turns flags into the two configs (and, for the DNC baseline, a `DNCConfig`: `dnc_config=`).
Shapes follow the package glossary.

Distribution: every global batch of B episodes is split across the replicas of a
`tf.distribute` strategy; each replica returns its per-episode losses, scaled with
`tf.nn.compute_average_loss(..., global_batch_size=B)` so that the gradients summed over
replicas are those of the global mean (the Keras optimizer all-reduces them).

Several machines (`strategy="multi_worker"`): see `kanerva_tf.distribute`, which builds the
strategies and the per-worker input, and documents how data, files and faults are handled.
"""

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import tempfile
import time
from typing import ClassVar, Dict, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from kanerva_tf import data as data_lib
from kanerva_tf import distribute
from kanerva_tf import evaluation
from kanerva_tf import optimizers
from kanerva_tf import runs
from kanerva_tf.config import VAE_FIELDS, ModelConfig
from kanerva_tf.dnc_model import DNCConfig
# Re-exported: the strategies and their input were part of this module before distribute.py.
from kanerva_tf.distribute import COLLECTIVE_IMPLEMENTATIONS
from kanerva_tf.distribute import STRATEGIES
from kanerva_tf.distribute import TF_CONFIG_EXAMPLE
from kanerva_tf.distribute import WorkerLostError
from kanerva_tf.distribute import WorkerTask
from kanerva_tf.distribute import check_episodes
from kanerva_tf.distribute import make_strategy
from kanerva_tf.distribute import multi_worker_task
from kanerva_tf.distribute import worker_dataset_fn
from kanerva_tf.keras_fit import replica_seed  # the seeds of Keras fit's steps too
from kanerva_tf.model import PRECISIONS

__all__ = ["TrainConfig", "STRATEGIES", "COLLECTIVE_IMPLEMENTATIONS", "Interrupted",
           "WorkerLostError", "WorkerTask", "multi_worker_task", "make_strategy",
           "worker_dataset_fn", "make_train_function", "check_episodes", "replica_seed",
           "train_and_evaluate"]

@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings of a training run (the model's sizes live in `ModelConfig`).

  This section is the one description of every field: `train.py` takes its flags' help,
  defaults and choices from it, the dataclass defaults and `CHOICES`
  (`kanerva_tf.config.check_field_docs` keeps them in step).

  Attributes:
    model_type: the model trained: "kanerva" (the Kanerva Machine), "vae" (its matched VAE)
      or "dnc" (the DNC baseline of section 4.4 / Appendix D, `kanerva_tf.dnc_model`).
      Default: `"kanerva"`.
    dataset: a TFDS image dataset (`kanerva_tf.data`): "omniglot", "cifar10", or any TFDS
      dataset with an 'image' feature. Default: `"omniglot"`.
    data_dir: the TFDS data directory with the prepared dataset; None: $TFDS_DATA_DIR, else
      ~/tensorflow_datasets. Default: `None`.
    image_size: resize the images to this side (an int); None: the dataset's default (28 for
      omniglot, the native size otherwise). Default: `None`.
    binarize: threshold the images to {0, 1}; None: the dataset's default (omniglot True,
      otherwise False). Default: `None`.
    grayscale: convert the images to one channel; None: the dataset's default (omniglot
      True, otherwise False). Default: `None`.
    download: when the data is not prepared in the data directory, download and prepare it
      (`kanerva_tf.data.prepare`); False: fail at once. How the data is obtained, not what it
      is: not part of `data_kwargs` or of the run's identity. Default: `True`.
    train_split: the TFDS split trained on. Default: `"train"`.
    eval_split: the TFDS split of the periodic evaluation (the test bound, eq. 12 / T).
      Default: `"test"`.
    train_steps: total optimiser steps (a resumed run continues up to this number). Positive
      int. Default: `100_000`.
    batch_size: global batch B of episodes (split across replicas; divisible by their
      number; the paper: 16). Positive int. Default: `16`.
    learning_rate: Adam learning rate in (0, 1) (the paper: 1e-4; 3e-4 is in the range the
      paper reports as robust, 3e-5 to 3e-4, and faster for both models here: RESULTS.md).
      Default: `3e-4`.
    seed: seed of initialisation, data order and all sampling. Default: `0`.
    strategy: the `tf.distribute` strategy: "mirrored" (all local GPUs, else all logical CPU
      devices), "one_device" (the first GPU, else the CPU), "default" (no distribution) or
      "multi_worker" (`tf.distribute.MultiWorkerMirroredStrategy` over the machines of
      `TF_CONFIG`, each with all its GPUs, else its CPU; see the module docstring).
      Default: `"mirrored"`.
    collective_timeout_seconds: "multi_worker" only: every collective operation (all-reduce,
      broadcast) fails with DeadlineExceededError, stopping the run with `WorkerLostError`,
      when it has not completed after this many seconds
      (`tf.distribute.experimental.CommunicationOptions(timeout_seconds=...)`); 0 = no
      timeout. Dead workers are detected without it (module docstring); it guards against a
      worker that is alive but stuck. TensorFlow runs a thread per collective for the length
      of the timeout, so it costs about timeout x collectives per second threads (3 to 4
      collectives per step here): keep it to a few times the longest step or pause of a
      worker (the first step's tracing, an evaluation, a checkpoint save). Float >= 0.
      Default: `0.0`.
    collective_implementation: "multi_worker" only: "auto", "ring" (gRPC, CPUs) or "nccl"
      (GPUs), `tf.distribute.experimental.CommunicationImplementation`. Default: `"auto"`.
    steps_per_call: training steps run inside one `tf.function` call. Positive int.
      Default: `10`.
    log_every: steps between progress lines and training summaries (0 = never). Default:
      `100`.
    checkpoint_every: steps between checkpoints (0 = never; one is always made at the end).
      Default: `1000`.
    eval_every: steps between evaluations of the test bound (0 = never; one is always made
      at the end). Default: `1000`.
    eval_batches: batches of B episodes averaged by each evaluation. Positive int. Default:
      `10`.
    image_every: steps between image summaries (reconstructions, samples, denoising; 0 =
      never). Default: `5000`.
    max_checkpoints: checkpoints kept in `<workdir>/checkpoints`. Positive int. Default: `3`.
    jit_compile: XLA-compile each replica's forward and backward pass. Default: `False`.
    export: write the SavedModel to `<workdir>/export` at the end. Default: `True`.
    kl_y_warmup_steps: Kanerva Machine only, off (0) by default: the training loss weighs
      KL(q(y|x) || p(y)) by min(1, step / kl_y_warmup_steps), so that addresses can become
      image-dependent before they are charged in full (RESULTS.md); from that step on the
      loss is eq. 12. Evaluations always use eq. 12. Int >= 0. Default: `0`.
    precision: the computation of the encoder and decoder networks: "float32", or
      "bfloat16" (Keras' "mixed_bfloat16" policy: bfloat16 convolutions and dense layers,
      float32 variables); the memory's write and read (eq. 9-11, 6), the KLs and the
      likelihood of the loss (eq. 12) stay float32 (`kanerva_tf.model.PRECISIONS`). The
      variables and checkpoints are float32 either way. Default: `"float32"`.
  """
  # The allowed values of the fields that take one of a few strings (train.py's enum flags).
  CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {
      "model_type": tuple(runs.MODEL_TYPES), "strategy": STRATEGIES,
      "collective_implementation": COLLECTIVE_IMPLEMENTATIONS, "precision": PRECISIONS}

  model_type: str = "kanerva"
  dataset: str = "omniglot"
  data_dir: Optional[str] = None
  image_size: Optional[int] = None
  binarize: Optional[bool] = None
  grayscale: Optional[bool] = None
  download: bool = True
  train_split: str = "train"
  eval_split: str = "test"
  train_steps: int = 100_000
  batch_size: int = 16
  learning_rate: float = 3e-4
  seed: int = 0
  strategy: str = "mirrored"
  steps_per_call: int = 10
  log_every: int = 100
  checkpoint_every: int = 1000
  eval_every: int = 1000
  eval_batches: int = 10
  image_every: int = 5000
  max_checkpoints: int = 3
  jit_compile: bool = False
  export: bool = True
  kl_y_warmup_steps: int = 0
  collective_timeout_seconds: float = 0.0
  collective_implementation: str = "auto"
  precision: str = "float32"

  def __post_init__(self):
    if self.model_type not in runs.MODEL_TYPES:
      raise ValueError(f"model_type must be one of {sorted(runs.MODEL_TYPES)}; "
                       f"got {self.model_type!r}.")
    if self.strategy not in STRATEGIES:
      raise ValueError(f"strategy must be one of {STRATEGIES}; got {self.strategy!r}.")
    for name in ("train_steps", "batch_size", "steps_per_call", "eval_batches",
                 "max_checkpoints"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    for name in ("log_every", "checkpoint_every", "eval_every", "image_every",
                 "kl_y_warmup_steps"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0 = never / off); got {value!r}.")
    if self.kl_y_warmup_steps and self.model_type != "kanerva":
      raise ValueError("kl_y_warmup_steps needs model_type='kanerva' (the VAE has no y); got "
                       f"{self.model_type!r}.")
    if not isinstance(self.download, bool):
      raise ValueError(f"download must be True or False; got {self.download!r}.")
    if not (isinstance(self.learning_rate, float) and 0 < self.learning_rate < 1):
      raise ValueError(f"learning_rate must be a float in (0, 1); got {self.learning_rate!r}.")
    timeout = self.collective_timeout_seconds
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
      raise ValueError(f"collective_timeout_seconds must be a number >= 0 (0 = none); got "
                       f"{timeout!r}.")
    if self.collective_implementation not in COLLECTIVE_IMPLEMENTATIONS:
      raise ValueError(f"collective_implementation must be one of {COLLECTIVE_IMPLEMENTATIONS}; "
                       f"got {self.collective_implementation!r}.")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}.")
    if self.strategy != "multi_worker" and (timeout or self.collective_implementation != "auto"):
      raise ValueError("collective_timeout_seconds and collective_implementation apply to "
                       f"strategy='multi_worker' only; got strategy={self.strategy!r}.")

  def data_kwargs(self):
    """Keyword arguments of `kanerva_tf.data.episode_dataset` that describe the data."""
    return dict(data_dir=self.data_dir, image_size=self.image_size, binarize=self.binarize,
                grayscale=self.grayscale)


def _check_run_config(workdir, run_config):
  """Writes config.json for a new run; for a resumed run, checks the model is the same
  (its type, ModelConfig, data and, for the DNC, its sizes).

  The data directory is not compared: where the data lives is not what it is (a run resumes
  from a moved copy, or with TFDS_DATA_DIR instead of --data_dir); config.json records the
  latest one.
  """
  path = os.path.join(workdir, runs.CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    runs.save_run_config(workdir, run_config)
    return
  old = runs.load_run_config(workdir)
  if isinstance(old.get("model"), dict):
    # Compare configs, not dicts: fields added to ModelConfig after the run started take
    # their defaults, which keep the behaviour the run was trained with.
    old["model"] = json.loads(json.dumps(ModelConfig.from_dict(old["model"]).to_dict()))
  keys, compared = ("model_type", "model", "data"), dict(run_config)
  if run_config["model_type"] == "dnc" and old.get("model_type") == "dnc":
    # The DNC's sizes, with None resolved (None and the size it stands for are one model);
    # a run recorded before config.json had "dnc" was trained with the default DNCConfig.
    model = ModelConfig.from_dict(run_config["model"])
    old["dnc"] = _resolved_dnc(runs.dnc_config_of(old), model)
    compared["dnc"] = _resolved_dnc(runs.dnc_config_of(run_config), model)
    keys += ("dnc",)
  for key in keys:
    saved, now = old.get(key), compared[key]
    if key == "model" and run_config["model_type"] == "vae" and isinstance(saved, dict):
      # A VAE is the same model whatever the memory-only fields say (e.g. new defaults).
      saved, now = ({k: d.get(k) for k in VAE_FIELDS} for d in (saved, now))
    if key == "data" and isinstance(saved, dict):
      saved = {k: v for k, v in saved.items() if k != "data_dir"}
      now = {k: v for k, v in now.items() if k != "data_dir"}
    if saved != now:
      if isinstance(saved, dict) and isinstance(now, dict):
        diff = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)}
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
      else:
        detail = f"saved {saved!r}, now {now!r}"
      what = "DNC config (--dnc_* flags)" if key == "dnc" else key
      raise ValueError(
          f"{workdir!r} holds a run with a different {what} ({detail}). Resume it with the "
          "same settings, or use a new --workdir.")
  # The precision the networks computed in is part of the run (a run recorded before
  # config.json had it was float32); other train settings (e.g. train_steps) may change.
  saved = (old.get("train") or {}).get("precision", "float32")
  now = (run_config.get("train") or {}).get("precision", "float32")
  if saved != now:
    raise ValueError(
        f"{workdir!r} holds a run trained with --precision={saved}; now --precision={now}. "
        f"Resume it with --precision={saved}, or use a new --workdir.")
  runs.save_run_config(workdir, run_config)


def _resolved_dnc(dnc_config, model_config):
  """`DNCConfig.to_dict()` with the sizes None stands for (memory_slots K, word_size C)."""
  values = dnc_config.to_dict()
  values["memory_slots"] = values["memory_slots"] or model_config.memory_size
  values["word_size"] = values["word_size"] or model_config.code_size
  return values


def _scalar_keys(model_type):
  keys = ["loss", "reconstruction", "kl_z"]
  if model_type == "dnc":
    return keys + ["kl_y"]  # no memory prior: no kl_memory
  return keys + ["kl_y", "kl_memory"] if model_type == "kanerva" else keys


def _append_metrics(workdir, record):
  with tf.io.gfile.GFile(runs.metrics_path(workdir), "a") as f:
    f.write(json.dumps(record) + "\n")


def _image_grid(images, columns):
  """[N, H, W, D] in [0, 1] -> one image [1, rows*H, columns*W, D] for TensorBoard."""
  n, h, w, d = images.shape
  rows = -(-n // columns)
  pad = rows * columns - n
  images = np.concatenate([images, np.zeros((pad, h, w, d), images.dtype)])
  grid = images.reshape(rows, columns, h, w, d).transpose(0, 2, 1, 3, 4)
  return grid.reshape(1, rows * h, columns * w, d)


def _log_images(model, model_type, episode, step, seed):
  """Reconstructions, samples and iterative-reading denoising grids as image summaries."""
  x = episode[:1]                                                         # [1, T, H, W, D]
  shown = min(8, x.shape[1])
  recon = model.reconstruct(x, seed=(seed, 1)).numpy()
  tf.summary.image("reconstructions", _image_grid(
      np.concatenate([x[0, :shown], recon[0, :shown]]), shown), step=step)
  if model_type in ("kanerva", "dnc"):  # both write, read and generate from a memory
    memory = model.write(x, seed=(seed, 2))
    samples = model.generate(memory, shown, iterations=4, seed=(seed, 3)).numpy()  # [5, 1, N, ...]
    noisy = evaluation.corrupt_with_block(x[0, :shown], seed)[0][tf.newaxis]  # [1, N, H, W, D]
    denoised = model.read(noisy, memory, iterations=3, seed=(seed, 4)).numpy()    # [3, 1, N, ...]
    tf.summary.image("denoising", _image_grid(np.concatenate(
        [x[0, :shown], noisy[0].numpy()] + [d[0] for d in denoised]), shown), step=step)
    samples = samples[:, 0]
  else:
    samples = model.generate(shown, iterations=4, seed=(seed, 3)).numpy()
  tf.summary.image("samples", _image_grid(samples.reshape((-1,) + samples.shape[2:]), shown),
                   step=step)


def make_train_function(strategy, model, optimizer, step, *, keys, global_batch_size, seed,
                        jit_compile=False, kl_y_warmup_steps=0, check_inputs=True):
  """A `tf.function(iterator, num_steps, diagnostics=True)` running `num_steps` distributed
  training steps.

  Each replica computes its per-episode losses `[B / replicas]`, averages them over the
  *global* batch (`tf.nn.compute_average_loss`) and applies its gradients with the Keras
  optimizer, which sums them across replicas: the update is the one of the global mean.
  `step` (an int64 Variable) is incremented once per step. With `kl_y_warmup_steps` > 0 the
  Kanerva Machine's KL(y) term is weighted by min(1, step / kl_y_warmup_steps).

  `diagnostics` (a Python bool; each value is its own trace): with False the model skips
  the terms outside the loss (`model.diagnostic_terms`, the Kanerva Machine's `kl_memory`)
  and the result has no entry for them; the update is the same. `train_and_evaluate` passes
  True only on the calls whose metrics it logs. `check_inputs=False`: the step skips the
  model's run-time checks of the images' values, for an input pipeline that checks them
  itself (`check_episodes`, as `train_and_evaluate`'s does).

  Returns:
    The function; it returns the mean over its steps of the global-batch mean of each
    scalar in `keys` (without `model.diagnostic_terms` when `diagnostics` is False).
  """
  variables = model.trainable_variables
  replicas = strategy.num_replicas_in_sync
  diagnostic_keys = set(getattr(model, "diagnostic_terms", ()))

  def forward_backward(x, seed, kl_y_weight, diagnostics):
    # The VAE's call has no kl_y_weight: pass it only during a Kanerva Machine warm-up.
    extra = {} if kl_y_weight is None else {"kl_y_weight": kl_y_weight}
    if not diagnostics:
      extra["diagnostics"] = False
    if not check_inputs:
      extra["check_inputs"] = False
    with tf.GradientTape() as tape:
      out = model(x, training=True, seed=seed, **extra)
      loss = tf.nn.compute_average_loss(out["per_example_loss"],
                                        global_batch_size=global_batch_size)
    return tape.gradient(loss, variables), out

  if jit_compile:
    forward_backward = tf.function(forward_backward, jit_compile=True)

  def replica_step(x, step_keys, diagnostics):
    ctx = tf.distribute.get_replica_context()
    kl_y_weight = (tf.minimum(1., tf.cast(step, tf.float32) / kl_y_warmup_steps)
                   if kl_y_warmup_steps else None)
    grads, out = forward_backward(
        x, replica_seed(seed, step, ctx.replica_id_in_sync_group, replicas), kl_y_weight,
        diagnostics)
    optimizer.apply_gradients(zip(grads, variables))
    fraction = tf.cast(tf.shape(x)[0], tf.float32) / global_batch_size
    # [len(step_keys)], summed over replicas: the global means (one all-reduce for all).
    return tf.stack([out[k] for k in step_keys]) * fraction

  @tf.function
  def train_calls(iterator, num_steps, diagnostics=True):
    step_keys = [k for k in keys if diagnostics or k not in diagnostic_keys]
    totals = tf.zeros([len(step_keys)])
    for _ in tf.range(num_steps):
      per_replica = strategy.run(
          functools.partial(replica_step, step_keys=step_keys, diagnostics=diagnostics),
          args=(next(iterator),))
      step.assign_add(1)
      totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    means = totals / tf.cast(num_steps, tf.float32)
    return {k: means[i] for i, k in enumerate(step_keys)}

  return train_calls


def _same_path(a, b):
  return a is not None and b is not None and os.path.normpath(a) == os.path.normpath(b)


class Interrupted(Exception):
  """Raised by `train_and_evaluate` after SIGTERM, once the checkpoint is saved."""


def train_and_evaluate(model_config: ModelConfig, train_config: TrainConfig, workdir: str,
                       dnc_config: Optional[DNCConfig] = None):
  """Trains (or resumes) a run in `workdir`, evaluating, checkpointing and exporting.

  `dnc_config`: the DNC's sizes, model_type "dnc" only (None: the default `DNCConfig()`);
  config.json records it under "dnc", and a resumed run must have the same sizes.

  Returns:
    dict: the final step, the last training metrics and the last evaluation metrics.

  A damaged newest checkpoint (truncated or corrupted files) is skipped with a warning and
  the run resumes from the newest one that restores (`runs.restore_checkpoint`). A failure
  while saving a checkpoint or the export propagates, and leaves the run resumable: a
  checkpoint's files are recorded only once complete, the export is swapped in atomically.

  Raises:
    FloatingPointError: the loss became NaN/Inf; the last good checkpoint is kept.
    ValueError: inconsistent settings (workdir of another run, data vs model shapes, ...).
    OSError: the workdir cannot be written (checked before any training).
    runs.CheckpointError: the run has checkpoints but none of them restores.
    WorkerLostError: strategy "multi_worker" only: another worker died or a collective
      timed out (see the module docstring).

  With strategy "multi_worker" every worker calls this with the same arguments; only the
  chief writes `workdir` (the others write a temporary directory that they delete, module
  docstring), and the strategy is created first, before TensorFlow runs anything.
  """
  cfg = train_config
  if cfg.model_type == "dnc":
    dnc_config = DNCConfig() if dnc_config is None else dnc_config
    if not isinstance(dnc_config, DNCConfig):
      raise TypeError(f"dnc_config must be a kanerva_tf.dnc_model.DNCConfig; got {dnc_config!r}.")
  elif dnc_config is not None:
    raise ValueError(f"dnc_config (the --dnc_* flags) sets the sizes of the DNC baseline: it "
                     f"needs model_type 'dnc'; got model_type {cfg.model_type!r}.")
  task = strategy = None
  if cfg.strategy == "multi_worker":
    task = multi_worker_task()
    logging.info("Multi-worker training: %s %d (worker %d of %d%s); waiting for every worker "
                 "of TF_CONFIG to start.", task.type, task.index, task.worker,
                 task.num_workers, ", the chief" if task.is_chief else "")
    strategy = make_strategy(cfg.strategy,
                             collective_timeout_seconds=cfg.collective_timeout_seconds,
                             collective_implementation=cfg.collective_implementation)
    if bool(strategy.extended.should_checkpoint) != task.is_chief:
      raise RuntimeError(f"TensorFlow and TF_CONFIG disagree on whether {task} is the chief.")
  write_dir = workdir
  if task is not None and not task.is_chief:
    write_dir = tempfile.mkdtemp(prefix=f"kanerva_tf-{task.type}{task.index}-")
    logging.info("Not the chief: writing checkpoints, summaries and the export to %s "
                 "(deleted at exit); the chief writes %s.", write_dir, workdir)
  progress = {"step": None}
  try:
    return _train_and_evaluate(model_config, cfg, workdir, write_dir, strategy, task, progress,
                               dnc_config)
  except distribute.PEER_ERRORS as e:
    if task is None:
      raise
    at = f" at step {progress['step']}" if progress["step"] is not None else ""
    raise WorkerLostError(
        f"Multi-worker training stopped on {task.type} {task.index}{at}: a collective "
        f"operation failed ({type(e).__name__}: {distribute.error_cause(e)}). Another "
        "worker died, or did not answer within the timeouts (the coordination service's "
        "heartbeat; --collective_timeout_seconds); see the other workers' logs. Re-run every "
        f"worker's command to resume from the last checkpoint in {workdir} (the chief's)."
    ) from e
  finally:
    if write_dir != workdir:
      shutil.rmtree(write_dir, ignore_errors=True)


def _train_and_evaluate(model_config, cfg, workdir, write_dir, strategy, task, progress,
                        dnc_config):
  """`train_and_evaluate`: the chief's (or the only process's) `write_dir` is `workdir`."""
  chief = task is None or task.is_chief
  data_kwargs = cfg.data_kwargs()
  info = data_lib.dataset_info(cfg.dataset, cfg.train_split, download=cfg.download,
                               **data_kwargs)
  if tuple(info.image_shape) != model_config.image_shape:
    raise ValueError(
        f"Images of {cfg.dataset!r} ({cfg.train_split}) have shape {tuple(info.image_shape)} "
        f"but the model expects {model_config.image_shape}; set --image_size/--grayscale or "
        "the model's image shape to match.")
  if model_config.likelihood == "bernoulli" and not info.binarize:
    raise ValueError(f"likelihood 'bernoulli' needs binarized images, but {cfg.dataset!r} is "
                     "loaded with binarize=False; pass --binarize or --likelihood=gaussian.")
  run_config = {
      "model_type": cfg.model_type,
      "model": model_config.to_dict(),
      "data": {"dataset": cfg.dataset, **data_kwargs},
      "train": dataclasses.asdict(cfg),
  }
  if dnc_config is not None:
    run_config["dnc"] = dnc_config.to_dict()
  run_config = json.loads(json.dumps(run_config))  # the form it takes in config.json
  runs.check_writable(write_dir)
  if chief:
    _check_run_config(workdir, run_config)

  strategy = strategy or make_strategy(cfg.strategy)
  replicas = strategy.num_replicas_in_sync
  if cfg.batch_size % replicas:
    where = f" of {task.num_workers} workers" if task is not None else ""
    raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {replicas} "
                     f"replicas{where} of the strategy.")
  episode_length = model_config.episode_length
  logging.info("Training %s on %s with %d replica(s) (%s); workdir %s", cfg.model_type,
               cfg.dataset, replicas, cfg.strategy, write_dir)

  keras.utils.set_random_seed(cfg.seed)
  with strategy.scope():
    model = runs.build_model(cfg.model_type, model_config, dnc_config, cfg.precision)
    model(tf.zeros((1, episode_length) + model_config.image_shape))
    optimizer = optimizers.FusedAdam(cfg.learning_rate)  # Keras' Adam, one op per variable
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, name="step", trainable=False)
    checkpoint = tf.train.Checkpoint(model_variables=runs.checkpointed_variables(model),
                                     optimizer=optimizer, step=step)
  manager = tf.train.CheckpointManager(checkpoint, runs.checkpoint_dir(write_dir),
                                       max_to_keep=cfg.max_checkpoints)
  # Only the chief reads the workdir; it sends what it restored to the other workers.
  restored = runs.restore_checkpoint(checkpoint, runs.checkpoint_dir(workdir)) if chief else None
  if task is not None:
    distribute.broadcast_from_chief(
        strategy, list(model.variables) + list(optimizer.variables) + [step])
    any_worker = distribute.any_worker_flag(strategy)
  if restored:
    logging.info("Resumed from %s at step %d", restored, int(step.numpy()))
    # Restored with the optimizer's variables (a MirroredVariable under tf.distribute).
    saved_rate = float(tf.convert_to_tensor(optimizer.learning_rate).numpy())
    if not math.isclose(saved_rate, cfg.learning_rate, rel_tol=1e-5):
      logging.warning("The run resumes with the learning rate %g of its checkpoint, not "
                      "learning_rate=%g: the optimizer's state, its learning rate included, "
                      "comes from the checkpoint.", saved_rate, cfg.learning_rate)
  start_step = int(step.numpy())
  progress["step"] = start_step
  if not chief and start_step:
    logging.info("Resumed at step %d from the chief's checkpoint.", start_step)
  last_good = [restored]  # the newest checkpoint known to restore

  # Batch i of the data is a pure function of (seed, i): a resumed run draws fresh batches.
  train_seed = cfg.seed * 1_000_003 + start_step
  if task is None:
    train_ds = data_lib.episode_dataset(
        cfg.dataset, cfg.train_split, batch_size=cfg.batch_size, episode_length=episode_length,
        seed=train_seed, download=cfg.download, **data_kwargs)
    iterator = iter(strategy.experimental_distribute_dataset(check_episodes(train_ds)))
  else:  # each worker its own part of every global batch (worker_dataset_fn)
    iterator = iter(strategy.distribute_datasets_from_function(worker_dataset_fn(
        cfg.dataset, cfg.train_split, batch_size=cfg.batch_size, episode_length=episode_length,
        seed=train_seed, download=cfg.download, **data_kwargs)))
  eval_ds = data_lib.episode_dataset(
      cfg.dataset, cfg.eval_split, batch_size=cfg.batch_size, episode_length=episode_length,
      seed=cfg.seed + 1, repeat=False, num_episodes=cfg.eval_batches * cfg.batch_size,
      download=cfg.download, **data_kwargs)
  keys = _scalar_keys(cfg.model_type)
  train_calls = make_train_function(strategy, model, optimizer, step, keys=keys,
                                    global_batch_size=cfg.batch_size, seed=cfg.seed,
                                    jit_compile=cfg.jit_compile,
                                    kl_y_warmup_steps=cfg.kl_y_warmup_steps,
                                    check_inputs=False)  # check_episodes checked the input

  def evaluate():
    result = evaluation.evaluate_bound(model, eval_ds, seed=cfg.seed + 2)
    result.pop("num_episodes")
    # Gaussian likelihood: the range of p(x|z)'s per-pixel scale on the first test batch.
    result.update(evaluation.likelihood_scale_range(model, image_episode))
    return result

  writers = {split: tf.summary.create_file_writer(os.path.join(write_dir, split))
             for split in ("train", "test")}
  image_episode = next(iter(eval_ds)).numpy()

  def due(period, now):
    return period > 0 and now % period == 0

  def save(now, metrics):
    if not all(math.isfinite(v) for v in metrics.values()):
      kept = ("the chief keeps its last good checkpoint" if not chief
              else f"the last good checkpoint {last_good[0]} is kept" if last_good[0]
              else "no checkpoint had been saved")
      raise FloatingPointError(
          f"Non-finite training loss at step {now} ({metrics}); {kept}. Lower "
          "--learning_rate or check the data.")
    last_good[0] = manager.save(checkpoint_number=now)

  stop_requested = [False]

  def on_sigterm(signum, frame):  # pylint: disable=unused-argument
    if task is None:
      raise Interrupted()
    # Several workers: every worker must stop at the same step, so the flag is combined
    # across them after the tf.function call in progress (any_worker below).
    logging.warning("SIGTERM: stopping every worker with a checkpoint after this call.")
    stop_requested[0] = True

  previous_handler = None
  try:
    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
  except ValueError:  # not in the main thread
    pass

  metrics, eval_metrics = {}, {}
  window_start, window_steps = time.time(), 0
  run_start, run_start_step = time.time(), start_step
  now = start_step
  try:
    while now < cfg.train_steps:
      periods = [cfg.train_steps] + [p for p in (cfg.log_every, cfg.checkpoint_every,
                                                  cfg.eval_every, cfg.image_every) if p]
      next_stop = min(((now // p) + 1) * p for p in periods)
      num = min(cfg.steps_per_call, next_stop - now, cfg.train_steps - now)
      # The diagnostics (kl_memory) only in the calls whose metrics are logged: their
      # steps compute them, so every logged value is the mean over the call's steps, as the
      # other metrics; the other calls skip them (a second trace of the step).
      logged = due(cfg.log_every, now + num) or now + num >= cfg.train_steps
      out = train_calls(iterator, tf.constant(num), diagnostics=logged)
      metrics = {k: float(v) for k, v in out.items()}
      now = int(step.numpy())
      progress["step"] = now
      window_steps += num
      if not all(math.isfinite(v) for v in metrics.values()):
        save(now, metrics)  # raises FloatingPointError without saving
      if task is not None and any_worker(stop_requested[0]):
        raise Interrupted()
      last = now >= cfg.train_steps
      if due(cfg.log_every, now) or last:
        elapsed = time.time() - window_start
        rate = window_steps / max(elapsed, 1e-9)
        overall = (now - run_start_step) / max(time.time() - run_start, 1e-9)
        eta = (cfg.train_steps - now) / max(overall, 1e-9)
        with writers["train"].as_default():
          for k, v in metrics.items():
            tf.summary.scalar(k, v, step=now)
          tf.summary.scalar("learning_rate", cfg.learning_rate, step=now)
          tf.summary.scalar("steps_per_sec", rate, step=now)
        _append_metrics(write_dir, {"step": now, "split": "train", "steps_per_sec": rate,
                                  "time": time.time(), **metrics})
        logging.info("step %d/%d  loss %.2f  (%s)  %.2f steps/s  ETA %s", now, cfg.train_steps,
                     metrics["loss"], "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()
                                                 if k != "loss"),
                     rate, time.strftime("%H:%M:%S", time.gmtime(eta)))
        window_start, window_steps = time.time(), 0
      if due(cfg.checkpoint_every, now) and not last:
        save(now, metrics)
      if due(cfg.eval_every, now) or last:
        eval_metrics = evaluate()
        with writers["test"].as_default():
          for k, v in eval_metrics.items():
            tf.summary.scalar(k, v, step=now)
        _append_metrics(write_dir, {"step": now, "split": cfg.eval_split, **eval_metrics})
        logging.info("eval %s at step %d: %s", cfg.eval_split, now,
                     "  ".join(f"{k} {v:.3f}" for k, v in eval_metrics.items()))
      if due(cfg.image_every, now) or last:
        with writers["train"].as_default():
          _log_images(model, cfg.model_type, image_episode, now, cfg.seed)
    # Also when the run resumed from a checkpoint that the state file does not name as the
    # latest (the newer one was damaged, or never recorded): record it as the latest.
    final = now > start_step or not _same_path(manager.latest_checkpoint, restored)
    if task is not None:
      final = any_worker(final and chief)  # the chief decides, so that every worker saves
    if final:
      save(now, metrics)
  except (KeyboardInterrupt, Interrupted):
    now = int(step.numpy())
    if metrics and now > start_step:
      logging.warning("Interrupted at step %d: saving a checkpoint before exiting.", now)
      save(now, metrics)
    raise
  finally:
    for writer in writers.values():
      writer.flush()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)

  if cfg.export:
    from kanerva_tf import export as export_lib  # pylint: disable=g-import-not-at-top
    export_lib.export(model, runs.export_dir(write_dir), cfg.model_type)
    logging.info("Exported the SavedModel to %s", runs.export_dir(write_dir))
  return {"step": now, "train": metrics, "eval": eval_metrics}
