"""A training run's working directory: its layout, its config, and restoring its model.

Layout of `<workdir>`:

  config.json     {"model_type": "kanerva" | "vae" | "dnc", "model": ModelConfig.to_dict(),
                   "data": {...}, "train": {...}}  written once when the run starts
  checkpoints/    tf.train.CheckpointManager checkpoints of
                  {model_variables (see `checkpointed_variables`), optimizer, step}
  metrics.jsonl   one JSON object per line: {"step", "split": "train" | "test", terms...}
  train/, test/   TensorBoard event files
  export/         the SavedModel for serving (kanerva_tf.export)
"""

import json
import os

import tensorflow as tf

from kanerva_tf.config import ModelConfig
from kanerva_tf.dnc_model import DNCMachine
from kanerva_tf.model import KanervaMachine
from kanerva_tf.model import VAE

__all__ = ["MODEL_TYPES", "build_model", "checkpointed_variables", "save_run_config", "load_run_config",
           "restore_model", "checkpoint_dir", "export_dir", "metrics_path"]

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


def build_model(model_type, config):
  """A `KanervaMachine` ("kanerva"), `VAE` ("vae") or `DNCMachine` ("dnc", the DNC
  baseline with the default `DNCConfig`) for `config`."""
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type must be one of {sorted(MODEL_TYPES)}; got {model_type!r}.")
  return MODEL_TYPES[model_type](config, name=model_type)


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


def restore_model(workdir, checkpoint=None, model_overrides=None):
  """Rebuilds the run's model and restores its weights.

  Args:
    workdir: a run directory written by `kanerva_tf.training`.
    checkpoint: a checkpoint path; default the latest in `<workdir>/checkpoints`.
    model_overrides: optional dict of `ModelConfig` fields to change before building, e.g.
      {"reuse_write_address": False} to evaluate with eq. 12's independent read; fields that
      change the variables (sizes) fail the restore.

  Returns:
    (model, run_config, step): the built model with restored weights, the run's config
    dict, and the training step of the checkpoint.
  """
  run_config = load_run_config(workdir)
  config = ModelConfig.from_dict({**run_config["model"], **(model_overrides or {})})
  model = build_model(run_config["model_type"], config)
  model(tf.zeros((1, 2) + config.image_shape))  # create the variables
  path = checkpoint or tf.train.latest_checkpoint(checkpoint_dir(workdir))
  if path is None:
    raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(workdir)}: train first, or pass "
                            "the path of a checkpoint.")
  step = tf.Variable(0, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(model_variables=checkpointed_variables(model), step=step)
  checkpoint.read(path).expect_partial().assert_existing_objects_matched()
  return model, run_config, int(step.numpy())
