r"""Trains a Kanerva Machine, its matched VAE, or the DNC baseline (--model=dnc).

  python train.py --flagfile=omniglot.flags
  python train.py --flagfile=cifar.flags --workdir=/tmp/km_cifar --train_steps=2000

Flags -> (ModelConfig, TrainConfig) -> kanerva_tf.training.train_and_evaluate. Re-running the
same command resumes from the last checkpoint in --workdir. On several machines: the same
command on each, with --strategy=multi_worker and TF_CONFIG naming the cluster and the
machine's task (README, "Training on several machines").
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN kernels: ~2.4x faster training on CPUs where TensorFlow leaves them off (kanerva_tf
# docstring); must be set before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def define_flags():
  """Every flag has a default and a help string; sizes default to the dataset's preset."""
  from kanerva_tf import config  # pylint: disable=g-import-not-at-top
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top
  defaults = training.TrainConfig()
  # Data.
  flags.DEFINE_string("dataset", "omniglot", "TFDS image dataset: omniglot, cifar10, or any "
                      "TFDS dataset with an 'image' feature.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory with the prepared dataset "
                      "(default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).")
  flags.DEFINE_bool("download", True, "Download and prepare the dataset into the data "
                    "directory when it is not there (--nodownload: fail at once).")
  flags.DEFINE_integer("image_size", None, "Resize images to this side (default: the dataset's "
                       "preset: 28 for omniglot, native otherwise).", lower_bound=8)
  flags.DEFINE_bool("binarize", None, "Threshold images to {0, 1} (default: dataset preset).")
  flags.DEFINE_bool("grayscale", None, "Convert images to one channel (default: preset).")
  flags.DEFINE_string("train_split", "train", "TFDS split to train on.")
  flags.DEFINE_string("eval_split", "test", "TFDS split for the periodic test bound.")
  # Model.
  flags.DEFINE_enum("model", "kanerva", ["kanerva", "vae", "dnc"], "Kanerva Machine, matched "
                    "VAE, or the DNC baseline (Appendix D; sizes: kanerva_tf.dnc_model).")
  flags.DEFINE_integer("episode_length", 32, "T, images per episode.", lower_bound=1)
  flags.DEFINE_integer("code_size", None, "C (default: preset; omniglot 100, cifar 200).",
                       lower_bound=1)
  flags.DEFINE_integer("memory_size", None, "K (default: preset; omniglot 64, cifar 128).",
                       lower_bound=1)
  flags.DEFINE_integer("address_size", None, "S (default: preset, 50).", lower_bound=1)
  flags.DEFINE_integer("y_size", None, "Dimension of the addressing variable y (default: "
                       "preset, 50).", lower_bound=1)
  flags.DEFINE_float("y_noise_std", None, "Std of the N(0, s^2) noise on the input of q(y|x) "
                     "in training (default: preset, 0.2 as in Appendix C).", lower_bound=0.)
  flags.DEFINE_float("noise_variance", None, "sigma^2 of p(z|y,M) (eq. 6; default: preset, 1 "
                     "as in the paper).", lower_bound=0.)
  flags.DEFINE_integer("num_filters", None, "Conv filters (default: preset; 16 / 32).",
                       lower_bound=1)
  flags.DEFINE_enum("likelihood", None, ["bernoulli", "gaussian"],
                    "p(x|z) (default: bernoulli for binarized data, else gaussian).")
  flags.DEFINE_enum("write_method", "batch", ["batch", "online"], "Memory write: one T x T "
                    "solve, or on-line (identical posterior).")
  flags.DEFINE_integer("chunk_size", None, "On-line write: observations per step.",
                       lower_bound=1)
  flags.DEFINE_bool("distribution_memory", False, "Distribution-based read/write (App. F).")
  flags.DEFINE_enum("kernel_initializer", "glorot_uniform",
                    ["glorot_uniform", "he_normal", "lecun_normal"],
                    "Initializer of every conv / dense kernel (see kanerva_tf.networks).")
  flags.DEFINE_integer("kl_y_warmup_steps", 0, "Kanerva Machine: weigh KL(y) by min(1, step / "
                       "N) in the training loss (0 = off: eq. 12 throughout).", lower_bound=0)
  flags.DEFINE_bool("reuse_write_address", False, "Experiment switch, NOT eq. 12: read x_t with "
                    "the address sample that wrote it (see kanerva_tf.ModelConfig).")
  flags.DEFINE_enum("read_posterior", None, config.READ_POSTERIORS,
                    "Kanerva Machine: q(z|x,y,M) mean from the MLP (concat), read + MLP output "
                    "(residual), or mean of q(z|x) + MLP output (encoder_skip) (default: "
                    "preset, encoder_skip).")
  flags.DEFINE_float("prior_loc_stddev", 0., "Kanerva Machine: initial R_0 entries "
                     "~ truncated N(0, s^2) (0 = zeros).", lower_bound=0.)
  flags.DEFINE_float("y_scale", None, "Kanerva Machine: one learned scale of q(y|x) shared by "
                     "all inputs, initialised to this value; 0 = a scale per input output by the "
                     "q(y|x) MLP (default: preset).", lower_bound=0.)
  flags.DEFINE_enum("write_address", None, config.WRITE_ADDRESSES, "Kanerva Machine: write "
                    "with w from a sample of q(y|x) or from its mean (default: preset, mean).")
  # Optimisation and distribution.
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, summaries, export.")
  flags.DEFINE_integer("train_steps", 100_000, "Total training steps.", lower_bound=1)
  flags.DEFINE_integer("batch_size", 16, "Global batch B of episodes.", lower_bound=1)
  flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate (paper: 1e-4; 3e-4 is in its "
                     "robust range and trains both models faster here, RESULTS.md).",
                     lower_bound=0.)
  flags.DEFINE_integer("seed", 0, "Seed of initialisation, data and sampling.")
  flags.DEFINE_enum("strategy", defaults.strategy, training.STRATEGIES,
                    "tf.distribute strategy: mirrored = all local GPUs (else CPU devices); "
                    "multi_worker = MultiWorkerMirroredStrategy over the machines of the "
                    "TF_CONFIG environment variable (--batch_size is the global batch).")
  flags.DEFINE_float("collective_timeout_seconds", defaults.collective_timeout_seconds,
                     "multi_worker: fail every all-reduce not done after this many seconds "
                     "(CommunicationOptions.timeout_seconds; 0 = none). Dead workers are "
                     "detected without it; costs a thread per collective for that long.",
                     lower_bound=0.)
  flags.DEFINE_enum("collective_implementation", defaults.collective_implementation,
                    training.COLLECTIVE_IMPLEMENTATIONS,
                    "multi_worker: all-reduce over gRPC (ring, CPUs), NCCL (GPUs), or auto.")
  flags.DEFINE_integer("steps_per_call", 10, "Training steps per tf.function call.",
                       lower_bound=1)
  flags.DEFINE_bool("jit_compile", False, "XLA-compile the forward/backward pass.")
  flags.DEFINE_integer("log_every", 100, "Steps between progress lines and summaries.",
                       lower_bound=0)
  flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.", lower_bound=0)
  flags.DEFINE_integer("eval_every", 1000, "Steps between test-bound evaluations.",
                       lower_bound=0)
  flags.DEFINE_integer("eval_batches", 10, "Batches per evaluation.", lower_bound=1)
  flags.DEFINE_integer("image_every", 5000, "Steps between image summaries.", lower_bound=0)
  flags.DEFINE_bool("export", True, "Export a SavedModel to <workdir>/export at the end.")
  flags.mark_flag_as_required("workdir")


def configs_from_flags():
  """(ModelConfig, TrainConfig) from the flags; ValueError names a bad value."""
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top
  from kanerva_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top

  train_config = training.TrainConfig(
      model_type=FLAGS.model, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      download=FLAGS.download,
      image_size=FLAGS.image_size, binarize=FLAGS.binarize, grayscale=FLAGS.grayscale,
      train_split=FLAGS.train_split, eval_split=FLAGS.eval_split,
      train_steps=FLAGS.train_steps, batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate, seed=FLAGS.seed, strategy=FLAGS.strategy,
      steps_per_call=FLAGS.steps_per_call, log_every=FLAGS.log_every,
      checkpoint_every=FLAGS.checkpoint_every, eval_every=FLAGS.eval_every,
      eval_batches=FLAGS.eval_batches, image_every=FLAGS.image_every,
      jit_compile=FLAGS.jit_compile, export=FLAGS.export,
      kl_y_warmup_steps=FLAGS.kl_y_warmup_steps,
      collective_timeout_seconds=FLAGS.collective_timeout_seconds,
      collective_implementation=FLAGS.collective_implementation)
  overrides = {k: getattr(FLAGS, k) for k in (
      "code_size", "memory_size", "address_size", "num_filters", "likelihood", "chunk_size",
      "y_size", "y_noise_std", "noise_variance", "y_scale", "write_address",
      "read_posterior")
               if getattr(FLAGS, k) is not None}
  if overrides.get("y_scale") == 0:
    overrides["y_scale"] = None  # --y_scale=0: the per-input scale of the q(y|x) MLP
  overrides.update(write_method=FLAGS.write_method, episode_length=FLAGS.episode_length,
                   distribution_memory=FLAGS.distribution_memory,
                   kernel_initializer=FLAGS.kernel_initializer,
                   reuse_write_address=FLAGS.reuse_write_address,
                   prior_loc_stddev=FLAGS.prior_loc_stddev)
  if FLAGS.dataset == "omniglot" and FLAGS.image_size in (None, 28) and FLAGS.grayscale in (None, True):
    return ModelConfig.omniglot(**overrides), train_config
  if FLAGS.dataset == "cifar10" and FLAGS.image_size in (None, 32) and FLAGS.grayscale in (None, False):
    return ModelConfig.cifar(**overrides), train_config
  info = data_lib.dataset_info(FLAGS.dataset, FLAGS.train_split, download=FLAGS.download,
                               **train_config.data_kwargs())
  overrides.setdefault("likelihood", "bernoulli" if info.binarize else "gaussian")
  return ModelConfig(image_shape=tuple(info.image_shape), **overrides), train_config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.strategy == "multi_worker":
      # First: TensorFlow configures multi-worker collectives only before it runs anything
      # (configs_from_flags may load data); fails at once without a usable TF_CONFIG.
      training.make_strategy(FLAGS.strategy,
                             collective_timeout_seconds=FLAGS.collective_timeout_seconds,
                             collective_implementation=FLAGS.collective_implementation)
    model_config, train_config = configs_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  logging.info("Model: %s", model_config)
  try:
    result = training.train_and_evaluate(model_config, train_config, FLAGS.workdir)
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
