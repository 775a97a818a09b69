"""A training run's working directory: its layout, its config, and restoring its model.

Layout of `<workdir>`:

  config.json     {"model_type": "kanerva" | "vae" | "dnc", "model": ModelConfig.to_dict(),
                   "data": {...}, "train": {...}}  written once when the run starts; a DNC
                  run also has "dnc": DNCConfig.to_dict() (`dnc_config_of`)
  checkpoints/    tf.train.CheckpointManager checkpoints of
                  {model_variables (see `checkpointed_variables`), optimizer, step}
  metrics.jsonl   one JSON object per line: {"step", "split": "train" | "test", terms...}
  train/, test/   TensorBoard event files
  export/         the SavedModel for serving (kanerva_tf.export)
"""

import json
import os
import re
import uuid

import tensorflow as tf
from absl import logging

from kanerva_tf.config import ModelConfig
from kanerva_tf.dnc_model import DNCConfig
from kanerva_tf.dnc_model import DNCMachine
from kanerva_tf.model import KanervaMachine
from kanerva_tf.model import VAE

__all__ = ["MODEL_TYPES", "build_model", "checkpointed_variables", "save_run_config", "load_run_config",
           "dnc_config_of", "restore_model", "checkpoint_dir", "export_dir", "metrics_path",
           "CheckpointError", "checkpoint_paths", "restore_checkpoint", "check_writable"]

MODEL_TYPES = {"kanerva": KanervaMachine, "vae": VAE, "dnc": DNCMachine}
CONFIG_FILE = "config.json"


def checkpoint_dir(workdir):
  return os.path.join(workdir, "checkpoints")


def export_dir(workdir):
  return os.path.join(workdir, "export")


def metrics_path(workdir):
  return os.path.join(workdir, "metrics.jsonl")


def checkpointed_variables(model):
  """The model's variables as the `tf.Variable`s a `tf.train.Checkpoint` saves.

  Keras 3 keeps sub-layers held in Python lists out of TF's object graph, so checkpointing
  `model` itself would miss most weights; the list of all variables (in `model.variables`
  order, fixed by the config) is saved instead, under the key `model_variables`.
  """
  return [getattr(v, "value", v) for v in model.variables]


def build_model(model_type, config, dnc_config=None, precision="float32"):
  """A `KanervaMachine` ("kanerva"), `VAE` ("vae") or `DNCMachine` ("dnc", the DNC
  baseline with the sizes of `dnc_config`, a `DNCConfig`; None: the default) for `config`,
  its encoder and decoder computing in `precision` ("float32" or "bfloat16",
  `TrainConfig.precision`; the variables are float32 either way, so a checkpoint restores
  into either).

  Raises:
    ValueError: an unknown `model_type`, or a `dnc_config` for another model than "dnc".
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type must be one of {sorted(MODEL_TYPES)}; got {model_type!r}.")
  if model_type == "dnc":
    return DNCMachine(config, dnc_config, name=model_type, precision=precision)
  if dnc_config is not None:
    raise ValueError(f"A DNCConfig sets the sizes of the DNC baseline (model_type 'dnc'); "
                     f"got one for model_type {model_type!r}.")
  return MODEL_TYPES[model_type](config, name=model_type, precision=precision)


def dnc_config_of(run_config):
  """The `DNCConfig` of a run's config dict (`load_run_config`): None unless its model_type
  is "dnc"; its "dnc" entry, else (a run recorded before config.json had one) the default
  `DNCConfig()`, the sizes those runs were trained with."""
  if run_config.get("model_type") != "dnc":
    return None
  return DNCConfig.from_dict(run_config.get("dnc") or {})


def save_run_config(workdir, run_config):
  """Writes `run_config` (a JSON-able dict) to `<workdir>/config.json` atomically."""
  tf.io.gfile.makedirs(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(run_config, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def load_run_config(workdir):
  """Reads `<workdir>/config.json`; a clear FileNotFoundError when it is not a run."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {workdir!r} is not a kanerva_tf training run directory "
        "(train.py writes config.json there when a run starts).")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


class CheckpointError(RuntimeError):
  """A checkpoint, or every checkpoint of a run, is damaged: its files do not restore."""


# What TensorFlow raises for a checkpoint whose files are truncated, corrupted or missing: a
# truncated .data file gives IndexError("Read less bytes than requested"), a bad checksum, a
# damaged .index or a missing file an OpError (DataLossError, NotFoundError, ...). A model
# that does not match the checkpoint (ValueError, AssertionError) is not damage: it propagates.
_DAMAGE_ERRORS = (tf.errors.OpError, IndexError)


def _describe(error):
  message = (getattr(error, "message", None) or str(error)).strip().splitlines()
  first = message[0] if message else ""
  return f"{type(error).__name__}: {first[:300]}"


def _checkpoint_number(path):
  match = re.search(r"-(\d+)$", path)
  return int(match.group(1)) if match else -1


def _files_of(path):
  files = sorted(tf.io.gfile.glob(path + ".*"))
  return ", ".join(os.path.basename(f) for f in files) if files else "no files"


def checkpoint_paths(directory):
  """The checkpoints (path prefixes) in `directory`, newest (highest number = step) first.

  Those that the `checkpoint` state file of the `tf.train.CheckpointManager` lists, and any
  `ckpt-N.index` it does not list (a save that failed after writing its files, before
  recording them; a lost state file): nothing on disk is overlooked.
  """
  def norm(path):
    return path if "://" in path else os.path.normpath(path)

  paths = set()
  if tf.io.gfile.isdir(directory):
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
      paths.update(norm(p) for p in state.all_model_checkpoint_paths)
      paths.add(norm(state.model_checkpoint_path))
    paths.update(norm(p[:-len(".index")])
                 for p in tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index")))
  return sorted(paths, key=lambda p: (_checkpoint_number(p), p), reverse=True)


def restore_checkpoint(checkpoint, directory, path=None, *, partial=False):
  """Restores `checkpoint` from `path`, else from the newest checkpoint in `directory`
  that restores.

  A damaged checkpoint (truncated, corrupted or missing files) is skipped with a warning that
  names it and the error, and the next older one is tried; damaged files are left in place
  (training overwrites a checkpoint when it saves the same step again). A checkpoint that does
  not match the objects of `checkpoint` (another model) is an error, not damage.

  Args:
    checkpoint: a `tf.train.Checkpoint`.
    directory: the checkpoint directory, e.g. `checkpoint_dir(workdir)`.
    path: a checkpoint path prefix to restore instead of the newest in `directory`; it is
      the only one tried.
    partial: restore with `read(...).expect_partial()` (e.g. the model's variables without
      the optimizer), instead of `restore` of everything.

  Returns:
    The path restored, or None when `directory` holds no checkpoint (and no `path` is given).

  Raises:
    FileNotFoundError: `path` has no `.index` file.
    CheckpointError: no candidate restores; the message names each one, its error and files.
  """
  if path is not None:
    if not tf.io.gfile.exists(path + ".index"):
      raise FileNotFoundError(f"Checkpoint {path} not found: there is no {path}.index "
                              f"({_files_of(path)} with that prefix).")
    candidates = [path]
  else:
    candidates = checkpoint_paths(directory)
  failures = []
  for candidate in candidates:
    try:
      if partial:
        checkpoint.read(candidate).expect_partial().assert_existing_objects_matched()
      else:
        checkpoint.restore(candidate).assert_existing_objects_matched()
    except _DAMAGE_ERRORS as e:
      failures.append((candidate, e))
      logging.warning("Checkpoint %s does not restore (%s; files: %s): skipping it.",
                      candidate, _describe(e), _files_of(candidate))
      continue
    if failures:
      logging.warning("Restored %s, the newest checkpoint that restores; skipped the damaged "
                      "%s (left on disk).", candidate, ", ".join(p for p, _ in failures))
    return candidate
  if not failures:
    return None
  details = "; ".join(f"{p} ({_describe(e)}; files: {_files_of(p)})" for p, e in failures)
  if path is not None:
    raise CheckpointError(f"Checkpoint {path} does not restore: {details}. Pick another "
                          "checkpoint, or restore its files from a backup.")
  raise CheckpointError(
      f"No checkpoint in {directory} restores, all {len(failures)} are damaged: {details}. "
      f"Restore the files from a backup, or move {directory} aside to start over.")


def check_writable(workdir):
  """Creates `workdir` (and its parents) if needed and checks that files can be written in it
  and in its `checkpoints/` (if that exists), by writing and removing a probe file.

  Raises:
    OSError: naming the directory and the cause (read-only, a parent that is a file, ...).
  """
  for directory in (workdir, checkpoint_dir(workdir)):
    if directory != workdir and not tf.io.gfile.isdir(directory):
      continue
    probe = os.path.join(directory, f".write-test-{uuid.uuid4().hex[:8]}")
    try:
      tf.io.gfile.makedirs(directory)
      with tf.io.gfile.GFile(probe, "w") as f:
        f.write("")
      tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as e:
      raise OSError(f"Cannot write to the run directory {directory} ({_describe(e)}); nothing "
                    "was trained. Use a workdir that can be written (missing parents are "
                    "created), or fix its permissions.") from e


def restore_model(workdir, checkpoint=None, model_overrides=None):
  """Rebuilds the run's model (a DNC with its config.json sizes, `dnc_config_of`) and
  restores its weights.

  Args:
    workdir: a run directory written by `kanerva_tf.training`.
    checkpoint: a checkpoint path; default the newest in `<workdir>/checkpoints` that
      restores (damaged ones are skipped with a warning, see `restore_checkpoint`).
    model_overrides: optional dict of `ModelConfig` fields to change before building, e.g.
      {"distribution_memory": True} to evaluate with Appendix F's reads; fields that change
      the variables (sizes) fail the restore.

  Returns:
    (model, run_config, step): the built model with restored weights, the run's config
    dict, and the training step of the checkpoint.

  Raises:
    FileNotFoundError: no checkpoint (or no such `checkpoint`).
    CheckpointError: the checkpoint, or every checkpoint of the run, is damaged.
  """
  run_config = load_run_config(workdir)
  config = ModelConfig.from_dict({**run_config["model"], **(model_overrides or {})})
  model = build_model(run_config["model_type"], config, dnc_config_of(run_config))
  model(tf.zeros((1, 2) + config.image_shape))  # create the variables
  step = tf.Variable(0, dtype=tf.int64)
  restored = restore_checkpoint(
      tf.train.Checkpoint(model_variables=checkpointed_variables(model), step=step),
      checkpoint_dir(workdir), checkpoint, partial=True)
  if restored is None:
    raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(workdir)}: train first, or pass "
                            "the path of a checkpoint.")
  return model, run_config, int(step.numpy())
