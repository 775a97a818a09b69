r"""Evaluates a training run: test bound, importance-weighted NLL and the paper's figures.

  python eval.py --workdir=/tmp/km_omniglot
  python eval.py --workdir=/tmp/km_cifar --importance_samples=100 --num_batches=20 --nofigures

Flags -> kanerva_tf.evaluate_run.run_evaluation, which writes <out_dir>/eval.json (every number,
the checkpoint step and these flags) and the PNG figures; a short summary is printed. First,
with --download (the default), the run's dataset is downloaded and prepared when the data
directory lacks it (`prepare_data`).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN kernels: ~2.4x faster training on CPUs where TensorFlow leaves them off (kanerva_tf
# docstring); must be set before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags


def _is_int_list(values, allow_all=False):
  for v in values:
    if allow_all and v == "all":
      continue
    try:
      if int(v) < 1:
        return False
    except ValueError:
      return False
  return True


def define_flags(fv=flags.FLAGS):
  """Every flag has a default and a help string; bad values fail at parse time."""
  flags.DEFINE_string("workdir", None, "Training run directory (holds config.json and "
                      "checkpoints/). Required.", flag_values=fv)
  flags.DEFINE_string("checkpoint", None, "Checkpoint path to evaluate (default: the latest "
                      "in <workdir>/checkpoints).", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "Output directory for eval.json and the figures "
                      "(default: <workdir>/eval).", flag_values=fv)
  flags.DEFINE_string("split", "test", "TFDS split to evaluate on, e.g. test or test[:10%].",
                      flag_values=fv)
  flags.DEFINE_integer("num_batches", 0, "Batches of episodes for the test bound; 0 = one "
                       "pass over the split.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("batch_size", 16, "B, episodes per batch.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("episode_length", None, "T, images per episode (default: the run's "
                       "episode length).", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of episode sampling and model sampling.",
                       flag_values=fv)
  flags.DEFINE_integer("importance_samples", 0, "k > 0 adds an importance-weighted NLL "
                       "estimate with k samples per image; 0 = bound only.", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_bool("figures", True, "Write the PNG figures (--nofigures: numbers only).",
                    flag_values=fv)
  flags.DEFINE_bool("generation_fidelity", True, "Score the one-shot generation of Fig. 4: "
                    "is each sample's nearest neighbour (pixel L2) among the episode's images "
                    "or among as many test images of other classes? (--nogeneration_fidelity: "
                    "skip.)", flag_values=fv)
  flags.DEFINE_integer("fidelity_episodes", 32, "Episodes per class count for "
                       "--generation_fidelity.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("conditioning_size", None, "Images written to the memory for the "
                       "generation figure and its fidelity (default: the dataset's, 24 for "
                       "cifar10 as in Fig. 5, else 12 as in Fig. 4).", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_list("episode_sizes", ["16", "32", "64", "128", "256"], "Episode sizes T of "
                    "the bound-vs-episode-size sweep (Fig. 6 right); empty = no sweep.",
                    flag_values=fv)
  flags.DEFINE_list("class_counts", ["2", "4", "12", "all"], "Classes per episode for the "
                    "sweep, the one-shot generation figure and its fidelity; 'all' = no class "
                    "restriction.",
                    flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data directory overriding the run's (default: "
                      "the run's, else $TFDS_DATA_DIR, else ~/tensorflow_datasets).",
                      flag_values=fv)
  flags.DEFINE_bool("download", True, "Download and prepare the run's dataset into the data "
                    "directory when it is not there (--nodownload: fail at once).",
                    flag_values=fv)
  flags.register_validator("episode_sizes", _is_int_list, message="--episode_sizes must be a "
                           "comma-separated list of positive integers, e.g. 16,32,64.",
                           flag_values=fv)
  flags.register_validator("class_counts", lambda v: _is_int_list(v, allow_all=True),
                           message="--class_counts must be a comma-separated list of positive "
                           "integers or 'all', e.g. 2,4,12,all.", flag_values=fv)
  flags.register_validator("split", bool, message="--split must not be empty.",
                           flag_values=fv)


def main(argv, fv=flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not fv.workdir:
    raise app.UsageError("--workdir is required: the training run directory to evaluate.")
  if "://" not in fv.workdir and not os.path.isfile(os.path.join(fv.workdir, "config.json")):
    raise app.UsageError(f"--workdir={fv.workdir} is not a training run directory: it has no "
                         "config.json (train.py writes it when a run starts).")
  from kanerva_tf import evaluate_run  # pylint: disable=g-import-not-at-top

  flag_values = {name: fv[name].value for name in (
      "workdir", "checkpoint", "out_dir", "split", "num_batches", "batch_size", "episode_length",
      "seed", "importance_samples", "figures", "episode_sizes", "class_counts", "data_dir",
      "generation_fidelity", "fidelity_episodes", "conditioning_size")}
  try:
    result = evaluate_run.run_evaluation(
        fv.workdir, fv.out_dir, checkpoint=fv.checkpoint, num_batches=fv.num_batches or None,
        batch_size=fv.batch_size, episode_length=fv.episode_length, seed=fv.seed,
        importance_samples=fv.importance_samples, figures=fv.figures, split=fv.split,
        data_dir=fv.data_dir, episode_sizes=[int(t) for t in fv.episode_sizes],
        class_counts=[None if c == "all" else int(c) for c in fv.class_counts],
        fidelity=fv.generation_fidelity, fidelity_episodes=fv.fidelity_episodes,
        conditioning_size=fv.conditioning_size,
        command_line={"argv": list(sys.argv), "flags": flag_values})
  except FileNotFoundError as e:  # no checkpoint, or the data is not prepared
    raise app.UsageError(str(e)) from e
  print(evaluate_run.format_summary(result))


def prepare_data(fv=flags.FLAGS):
  """Makes sure the run's dataset is in the data directory (downloading it with --download).

  `main` then loads it without downloading. Does nothing when --workdir is not a run directory
  (`main` says so). A dataset that is absent and not downloaded is a UsageError.
  """
  if not fv.workdir or ("://" not in fv.workdir
                        and not os.path.isfile(os.path.join(fv.workdir, "config.json"))):
    return
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from kanerva_tf import runs  # pylint: disable=g-import-not-at-top
  saved = runs.load_run_config(fv.workdir).get("data") or {}
  if not saved.get("dataset"):
    return  # main reports the incomplete config.json
  try:
    data_lib.prepare(saved["dataset"], fv.data_dir or saved.get("data_dir"),
                     download=fv.download)
  except data_lib.DatasetNotFoundError as e:
    raise app.UsageError(str(e)) from None


def _prepare_and_main(argv):
  prepare_data()
  return main(argv)


if __name__ == "__main__":
  define_flags()

  def _main_with_clear_errors(argv):
    """`prepare_data` and `main`; an error of a setting is one line on stderr
    (`kanerva_tf.cli`; the full traceback with KANERVA_TRACEBACK=1 or --verbosity=1)."""
    try:
      _prepare_and_main(argv)
    except Exception as e:  # pylint: disable=broad-except
      from kanerva_tf import cli  # pylint: disable=g-import-not-at-top
      cli.exit_with_error("eval.py", e)

  app.run(_main_with_clear_errors)
