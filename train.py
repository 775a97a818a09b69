r"""Trains a Kanerva Machine, its matched VAE, or the DNC baseline (--model=dnc).

  python train.py --flagfile=omniglot.flags
  python train.py --flagfile=cifar.flags --workdir=/tmp/km_cifar --train_steps=2000

Flags -> (ModelConfig, TrainConfig; with --model=dnc a DNCConfig from the --dnc_* flags) ->
kanerva_tf.training.train_and_evaluate. Re-running the
same command resumes from the last checkpoint in --workdir. On several machines: the same
command on each, with --strategy=multi_worker and TF_CONFIG naming the cluster and the
machine's task (README, "Training on several machines").
"""

import functools
import os
import typing

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN kernels: ~2.4x faster training on CPUs where TensorFlow leaves them off (kanerva_tf
# docstring); must be set before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

FLAGS = flags.FLAGS

# --flag -> (config class, field) for the flags that set a ModelConfig, TrainConfig or
# DNCConfig field; filled by define_flags, read by configs_from_flags (and dnc_config_from_flags).
CONFIG_FLAGS = {}


def _dataset_presets():
  """{TFDS dataset name: the ModelConfig preset of the paper's settings for it}."""
  from kanerva_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
  return {"omniglot": ModelConfig.omniglot, "cifar10": ModelConfig.cifar}


def _define_field_flag(fv, cls, field, flag=None, *, preset=False, other_datasets=None,
                       note=None, **kwargs):
  """Defines --flag (default: --field) that sets the field `field` of the config class `cls`.

  The flag's type, default, choices (an enum flag) and help are the field's: its annotation,
  its dataclass default, `cls.CHOICES` and its entry in `cls`'s Attributes section
  (`kanerva_tf.config.field_docs`). preset=True: the flag's default is None and the dataset's
  preset decides (`configs_from_flags`); the help names the presets' values, and
  `other_datasets` (default: the dataclass default) what another dataset gets. `note` is
  added to the help; kwargs (e.g. lower_bound) go to the DEFINE function.
  """
  from kanerva_tf import config  # pylint: disable=g-import-not-at-top
  name = flag or field
  default = config.field_default(cls, field)
  help_text = config.field_docs(cls)[field]
  if preset:
    values = ", ".join(f"{dataset} {getattr(make(), field)!r}"
                       for dataset, make in _dataset_presets().items())
    help_text += (f" Unset: the dataset's preset ({values}; another dataset "
                  f"{other_datasets or repr(default)}).")
    default = None
  if note:
    help_text += " " + note
  kind = typing.get_type_hints(cls)[field]
  if typing.get_origin(kind) is typing.Union:  # Optional[X]
    kind = next(a for a in typing.get_args(kind) if a is not type(None))
  choices = cls.CHOICES.get(field)
  if choices:
    flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=fv, **kwargs)
  else:
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}[kind]
    define(name, default, help_text, flag_values=fv, **kwargs)
  CONFIG_FLAGS[name] = (cls, field)


def define_flags(fv=FLAGS):
  """Every flag has a default and a help string; sizes default to the dataset's preset.

  The flags of config fields take their type, default, choices and help from `ModelConfig`,
  `TrainConfig` and `DNCConfig` (`_define_field_flag`; --dnc_<field> for the DNC's sizes);
  only the flags of no field are written out here.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top
  from kanerva_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from kanerva_tf.dnc_model import DNCConfig  # pylint: disable=g-import-not-at-top
  train_flag = functools.partial(_define_field_flag, fv, training.TrainConfig)
  model_flag = functools.partial(_define_field_flag, fv, ModelConfig)
  # Data.
  for field in ("dataset", "data_dir", "download"):
    train_flag(field)
  train_flag("image_size", lower_bound=8)
  for field in ("binarize", "grayscale", "train_split", "eval_split"):
    train_flag(field)
  # Model.
  train_flag("model_type", "model")
  model_flag("episode_length", lower_bound=1)
  for field in ("code_size", "memory_size", "address_size", "y_size", "num_filters"):
    model_flag(field, preset=True, lower_bound=1)
  for field in ("y_noise_std", "noise_variance"):
    model_flag(field, preset=True, lower_bound=0.)
  model_flag("likelihood", preset=True,
             other_datasets="'bernoulli' for binarized data, else 'gaussian'")
  model_flag("write_method")
  model_flag("chunk_size", lower_bound=1)
  for field in ("distribution_memory", "kernel_initializer"):
    model_flag(field)
  train_flag("kl_y_warmup_steps", lower_bound=0)
  model_flag("read_posterior", preset=True)
  model_flag("y_scale", preset=True, lower_bound=0.,
             note="--y_scale=0 sets None: a scale per input.")
  model_flag("write_address", preset=True)
  model_flag("row_covariance")
  # The DNC baseline's sizes (--model=dnc only).
  for field in dataclasses.fields(DNCConfig):
    _define_field_flag(fv, DNCConfig, field.name, f"dnc_{field.name}", lower_bound=1,
                       note="--model=dnc only.")
  # Optimisation and distribution.
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, summaries, export.",
                      flag_values=fv)
  train_flag("train_steps", lower_bound=1)
  train_flag("batch_size", lower_bound=1)
  train_flag("learning_rate", lower_bound=0.)
  for field in ("seed", "strategy", "collective_implementation"):
    train_flag(field)
  train_flag("collective_timeout_seconds", lower_bound=0.)
  train_flag("steps_per_call", lower_bound=1)
  train_flag("jit_compile")
  train_flag("precision")
  for field in ("log_every", "checkpoint_every", "eval_every"):
    train_flag(field, lower_bound=0)
  train_flag("eval_batches", lower_bound=1)
  train_flag("image_every", lower_bound=0)
  train_flag("export")
  flags.mark_flag_as_required("workdir", flag_values=fv)


def configs_from_flags(fv=FLAGS):
  """(ModelConfig, TrainConfig) from the flags; ValueError names a bad value.

  Every flag of `CONFIG_FLAGS` sets its field; a ModelConfig flag left at None leaves the
  field to the dataset's preset (omniglot and cifar10 at their paper image size and
  channels), else to the ModelConfig default.
  """
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top
  from kanerva_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top

  values = {cls: {} for cls in (ModelConfig, training.TrainConfig)}
  for name, (cls, field) in CONFIG_FLAGS.items():
    if cls in values:  # not the DNCConfig's: dnc_config_from_flags
      values[cls][field] = fv[name].value
  train_config = training.TrainConfig(**values[training.TrainConfig])
  overrides = {k: v for k, v in values[ModelConfig].items() if v is not None}
  if overrides.get("y_scale") == 0:
    overrides["y_scale"] = None  # --y_scale=0: the per-input scale of the q(y|x) MLP
  preset = _dataset_presets().get(fv.dataset)
  if preset is not None:
    h, _, d = preset().image_shape
    if fv.image_size in (None, h) and fv.grayscale in (None, d == 1):
      return preset(**overrides), train_config
  info = data_lib.dataset_info(fv.dataset, fv.train_split, download=fv.download,
                               **train_config.data_kwargs())
  overrides.setdefault("likelihood", "bernoulli" if info.binarize else "gaussian")
  return ModelConfig(image_shape=tuple(info.image_shape), **overrides), train_config


def dnc_config_from_flags(fv=FLAGS):
  """The DNCConfig of the --dnc_* flags with --model=dnc, else None.

  Raises:
    ValueError: a --dnc_* flag is given with another --model (naming the flags), or a bad
      value.
  """
  from kanerva_tf.dnc_model import DNCConfig  # pylint: disable=g-import-not-at-top
  names = {name: field for name, (cls, field) in CONFIG_FLAGS.items() if cls is DNCConfig}
  if fv.model != "dnc":
    given = [f"--{name}" for name in names if fv[name].present]
    if given:
      raise ValueError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} the sizes of "
                       f"the DNC baseline and need{'s' if len(given) == 1 else ''} "
                       f"--model=dnc; got --model={fv.model}.")
    return None
  return DNCConfig(**{field: fv[name].value for name, field in names.items()})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from kanerva_tf import distribute  # pylint: disable=g-import-not-at-top
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.strategy == "multi_worker":
      # First: TensorFlow configures multi-worker collectives only before it runs anything
      # (configs_from_flags may load data); fails at once without a usable TF_CONFIG.
      distribute.make_strategy(FLAGS.strategy,
                               collective_timeout_seconds=FLAGS.collective_timeout_seconds,
                               collective_implementation=FLAGS.collective_implementation)
    model_config, train_config = configs_from_flags()
    dnc_config = dnc_config_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  logging.info("Model: %s", model_config)
  if dnc_config is not None:
    logging.info("DNC: %s", dnc_config)
  try:
    result = training.train_and_evaluate(model_config, train_config, FLAGS.workdir,
                                         dnc_config=dnc_config)
  except training.Interrupted:
    logging.warning("Interrupted by SIGTERM; the checkpoint is saved in %s: re-run the same "
                    "command to resume.", FLAGS.workdir)
    raise SystemExit(143) from None
  except KeyboardInterrupt:
    logging.warning("Interrupted by Ctrl-C; the checkpoints in %s include the last step "
                    "trained: re-run the same command to resume.", FLAGS.workdir)
    raise SystemExit(130) from None
  logging.info("Done at step %d: %s", result["step"], result["eval"])


if __name__ == "__main__":
  define_flags()

  def _main_with_clear_errors(argv):
    """`main`; an error of a setting is one line on stderr (`kanerva_tf.cli`; the full
    traceback with KANERVA_TRACEBACK=1 or --verbosity=1)."""
    try:
      main(argv)
    except Exception as e:  # pylint: disable=broad-except
      from kanerva_tf import cli  # pylint: disable=g-import-not-at-top
      cli.exit_with_error("train.py", e)

  app.run(_main_with_clear_errors)
