"""The evaluation of a training run, as `eval.py` runs it: every number and figure, eval.json.

`run_evaluation(workdir, out_dir, ...)` restores a run (`kanerva_tf.runs`), evaluates it on a
TFDS split with `kanerva_tf.evaluation` (test bound, importance-weighted NLL, address
diagnostics, bound sweep, one-shot generation fidelity), draws the paper's figures with
`kanerva_tf.figures`, and writes `<out_dir>/eval.json` and the PNG files; `format_summary`
turns the result into the lines that `eval.py` prints. `eval.py` only turns flags into that call.

Shapes follow the package glossary (`kanerva_tf/__init__.py`).
"""

import json
import os
from typing import Optional, Sequence

import tensorflow as tf
from absl import logging

from kanerva_tf import data as data_lib
from kanerva_tf import figures as figures_lib
from kanerva_tf import runs
from kanerva_tf.dnc_model import DNCMachine
from kanerva_tf.evaluation import CLASS_COUNTS
from kanerva_tf.evaluation import EPISODE_SIZES
from kanerva_tf.evaluation import MEMORY_MODELS
from kanerva_tf.evaluation import address_diagnostics
from kanerva_tf.evaluation import bound_sweep
from kanerva_tf.evaluation import check_int
from kanerva_tf.evaluation import class_count_problem
from kanerva_tf.evaluation import class_label
from kanerva_tf.evaluation import evaluate_bound
from kanerva_tf.fidelity import generation_fidelity
from kanerva_tf.model import KanervaMachine

__all__ = ["EVAL_FILE", "CONDITIONING_SIZE", "CONDITIONING_SIZES", "run_evaluation",
           "format_summary"]

EVAL_FILE = "eval.json"
CONDITIONING_SIZE = 12                   # Fig. 4: "conditioned on 12 random examples"
CONDITIONING_SIZES = {"cifar10": 24}     # Fig. 5: "conditioned on 24 random images"



def _check_class_counts(class_counts):
  out = []
  for c in class_counts:
    if c is None or c == "all":
      out.append(None)
    else:
      out.append(check_int("class count", c, minimum=1))
  return tuple(out)


def _data_kwargs(run_config, dataset=None, data_dir=None):
  """{"dataset", "data_dir", "image_size", "binarize", "grayscale"} from config.json + overrides."""
  saved = dict(run_config.get("data") or {})
  out = {key: saved.get(key) for key in ("dataset", "data_dir", "image_size", "binarize",
                                          "grayscale")}
  if dataset is not None:
    out["dataset"] = dataset
  if data_dir is not None:
    out["data_dir"] = data_dir
  if isinstance(out["image_size"], list):
    out["image_size"] = tuple(out["image_size"])
  if not out["dataset"]:
    raise ValueError("config.json of the run has no data.dataset (written by training); pass "
                     "the dataset name explicitly.")
  return out


def run_evaluation(workdir, out_dir=None, *, checkpoint=None, num_batches=None, batch_size=16,
                   episode_length=None, seed=0, importance_samples=0, figures=True,
                   split="test", dataset=None, data_dir=None,
                   episode_sizes: Sequence[int] = EPISODE_SIZES,
                   class_counts: Sequence[Optional[int]] = CLASS_COUNTS,
                   fidelity=True, fidelity_episodes=32, conditioning_size=None,
                   command_line=None, model_overrides=None):
  """Evaluates a training run; writes `<out_dir>/eval.json` and the figures.

  Args:
    workdir: the run directory (`kanerva_tf.runs`).
    out_dir: output directory; default `<workdir>/eval`.
    checkpoint: a checkpoint path; default the latest of the run.
    num_batches: batches of `batch_size` episodes for the test bound; None = one pass over the
      split (ceil(num_examples / T) episodes, rounded up to whole batches).
    batch_size: B, episodes per batch.
    episode_length: T; default the run's `ModelConfig.episode_length`.
    seed: seed of the episode sampling and of all model sampling.
    importance_samples: k > 0 adds the importance-weighted estimate (`evaluate_bound`).
    figures: write the PNG figures (the sweep numbers are computed regardless).
    split: TFDS split.
    dataset, data_dir: override the run's data (config.json "data"); image_size, binarize and
      grayscale always come from the run, so the images match the model.
    episode_sizes: T values of the bound sweep (Fig. 6 right); empty = no sweep.
    class_counts: classes per episode for the sweep, the generation figure and the generation
      fidelity; None or "all" = no class restriction.
    fidelity: compute `generation_fidelity` (Fig. 4 as a number: are the samples nearer to
      the conditioning images than to other test images?) for each class count.
    fidelity_episodes: episodes of `conditioning_size` images per class count for it.
    conditioning_size: images written to the memory for the generation figure and the
      generation fidelity; None = the dataset's (`CONDITIONING_SIZES`: 24 for CIFAR-10 as in
      Fig. 5, else `CONDITIONING_SIZE`, 12, as in Fig. 4).
    command_line: recorded in eval.json (e.g. sys.argv and the flag values).
    model_overrides: `ModelConfig` fields changed for the evaluation (`runs.restore_model`),
      recorded in eval.json.

  Returns:
    The dict written to eval.json: "bound" (see `evaluate_bound`), "sweep" (see
    `bound_sweep`, or None), "generation_fidelity" (see `generation_fidelity`, or None),
    "addressing" (see `address_diagnostics`; None for the VAE),
    "figures" {name: file name}, "notes", and the run's identity:
    "workdir", "checkpoint", "step", "model_type", "likelihood", "dataset", "data", "split",
    "episode_length", "batch_size", "num_batches", "seed", "importance_samples",
    "command_line", "out_dir".
  """
  batch_size = check_int("batch_size", batch_size, minimum=1)
  importance_samples = check_int("importance_samples", importance_samples, minimum=0)
  if num_batches is not None:
    num_batches = check_int("num_batches", num_batches, minimum=1)
  if episode_length is not None:
    episode_length = check_int("episode_length", episode_length, minimum=1)
  seed = check_int("seed", seed, minimum=-2**63)
  episode_sizes = tuple(check_int("episode size", t, minimum=1) for t in episode_sizes)
  class_counts = _check_class_counts(class_counts)
  fidelity_episodes = check_int("fidelity_episodes", fidelity_episodes, minimum=1)
  if conditioning_size is not None:
    conditioning_size = check_int("conditioning_size", conditioning_size, minimum=1)

  model, run_config, step = runs.restore_model(workdir, checkpoint, model_overrides)
  checkpoint = checkpoint or tf.train.latest_checkpoint(runs.checkpoint_dir(workdir))
  notes = []
  model_type = run_config["model_type"]
  config = model.config
  is_km = isinstance(model, KanervaMachine)
  data_kwargs = _data_kwargs(run_config, dataset, data_dir)
  name = data_kwargs["dataset"]
  conditioning_size = conditioning_size or CONDITIONING_SIZES.get(name, CONDITIONING_SIZE)
  load_kwargs = {k: v for k, v in data_kwargs.items() if k != "dataset"}
  info = data_lib.dataset_info(name, split, **load_kwargs)
  if info.image_shape != config.image_shape:
    raise ValueError(f"split {split!r} of {name!r} gives images of shape {info.image_shape} but "
                     f"the model was built for {config.image_shape}; check the data options.")
  t = episode_length or config.episode_length
  out_dir = out_dir or os.path.join(workdir, "eval")
  tf.io.gfile.makedirs(out_dir)
  logging.info("Evaluating %s (step %d, checkpoint %s) on %s/%s: T=%d, B=%d.", model_type, step,
               checkpoint, name, split, t, batch_size)

  num_episodes = None if num_batches is None else num_batches * batch_size
  ds = data_lib.episode_dataset(name, split, batch_size=batch_size, episode_length=t, seed=seed,
                                repeat=False, num_episodes=num_episodes, **load_kwargs)
  bound = evaluate_bound(model, ds, seed=seed, importance_samples=importance_samples)
  logging.info("Test bound: %s", bound)
  if importance_samples and is_km:
    notes.append("iw_loss estimates -log p(x_t | M) with M the written posterior mean and read "
                 "samples (y, z) independent of the write, like the model's loss (eq. 12); "
                 "see evaluation.importance_log_likelihood.")
  if importance_samples and isinstance(model, DNCMachine):
    notes.append("iw_loss estimates -log p(x_t | M) with M the written DNC state and read "
                 "samples y independent of the write, z ~ p(z|y, M), like the model's loss; "
                 "see evaluation.importance_log_likelihood.")

  # The first test batch, read once for the address diagnostics and the figures.
  first = next(iter(ds.take(1))) if is_km or figures else None         # [B, T, H, W, D]
  addressing = None
  if is_km:
    addressing = address_diagnostics(model, first, seed=seed)
    logging.info("Addressing: %s", addressing)

  sweep = None
  if episode_sizes:
    num_images = None if num_batches is None else bound["num_episodes"] * t
    sweep = bound_sweep(model, data_kwargs, split, episode_sizes=episode_sizes,
                        class_counts=class_counts, num_images=num_images,
                        batch_size=batch_size, seed=seed)
    for label, reason in sweep["skipped"].items():
      notes.append(f"sweep: {label} classes skipped: {reason}")

  fidelity_result = None
  if fidelity:
    fidelity_result = generation_fidelity(
        model, data_kwargs, split, class_counts=class_counts, num_episodes=fidelity_episodes,
        conditioning_size=conditioning_size, batch_size=batch_size, seed=seed)
    for label, reason in fidelity_result["skipped"].items():
      notes.append(f"generation_fidelity: {label} classes skipped: {reason}")
    if not fidelity_result["conditioned"]:
      notes.append("generation_fidelity: the VAE's samples come from its prior, not from the "
                   "conditioning images: the chance reference (nn_in_conditioning ~ 0.5)")

  written = {}
  if figures:
    def path(file):
      return os.path.join(out_dir, file)
    figures_lib.plot_reconstructions(model, first, path("reconstructions.png"), seed=seed)
    written["reconstructions"] = "reconstructions.png"
    conditioning = {}
    reads_memory = isinstance(model, MEMORY_MODELS)  # KM or DNC
    if reads_memory:
      size = conditioning_size
      for c in class_counts:
        problem = class_count_problem(c, info)
        if problem is None and c is not None and c > size:
          problem = f"more classes than the {size} conditioning images"
        if problem is None and c is None and size > info.num_examples:
          problem = f"the split has fewer than {size} images"
        if problem:
          notes.append(f"generation: {class_label(c)} classes skipped: {problem}")
          continue
        episode = next(iter(data_lib.episode_dataset(
            name, split, batch_size=1, episode_length=size, seed=seed, num_classes=c,
            repeat=False, num_episodes=1, **load_kwargs)))[0]
        conditioning[f"{'KM' if is_km else 'DNC'} ({class_label(c)} classes)"] = episode
    if conditioning or not reads_memory:
      figures_lib.plot_generation(model, conditioning, path("generation.png"), seed=seed)
      written["generation"] = "generation.png"
    if is_km:
      figures_lib.plot_denoising(model, first[0], path("denoising.png"), seed=seed)
      written["denoising"] = "denoising.png"
      if t >= 2:
        figures_lib.plot_interpolation(model, first[0], path("interpolation.png"), seed=seed)
        written["interpolation"] = "interpolation.png"
      else:
        notes.append("interpolation skipped: episodes of one image have no pairs")
    elif reads_memory:
      figures_lib.plot_denoising(model, first[0], path("denoising.png"), seed=seed)
      written["denoising"] = "denoising.png"
      notes.append("interpolation is a Kanerva Machine figure (it mixes addressing weights w): "
                   "skipped for the DNC")
    else:
      notes.append("denoising and interpolation are Kanerva Machine figures (they read a "
                   "memory): skipped for the VAE")
    if sweep is not None:
      figures_lib.plot_bound_sweep(sweep, path("bound_vs_episode_size.png"),
                       title=f"{model_type} on {name}/{split}: test bound vs episode size")
      written["bound_vs_episode_size"] = "bound_vs_episode_size.png"
  for note in notes:
    logging.info("Note: %s", note)

  result = {
      "workdir": str(workdir), "checkpoint": checkpoint, "step": step, "model_type": model_type,
      "likelihood": config.likelihood, "dataset": name, "data": data_kwargs, "split": split,
      "episode_length": t, "batch_size": batch_size, "num_batches": num_batches, "seed": seed,
      "importance_samples": importance_samples, "conditioning_size": conditioning_size,
      "bound": bound, "sweep": sweep,
      "generation_fidelity": fidelity_result,
      "addressing": addressing, "model_overrides": model_overrides or {},
      "figures": written, "notes": notes, "command_line": command_line, "out_dir": out_dir,
  }
  eval_path = os.path.join(out_dir, EVAL_FILE)
  with tf.io.gfile.GFile(eval_path + ".tmp", "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(eval_path + ".tmp", eval_path, overwrite=True)
  logging.info("Wrote %s", eval_path)
  return result


def format_summary(result):
  """A few lines summarising a `run_evaluation` result (loss in nats; bits/dim for colour)."""
  bound = result["bound"]
  terms = ", ".join(f"{k} {bound[k]:.3f}" for k in ("kl_y", "kl_z") if k in bound)
  lines = [f"{result['model_type']} at step {result['step']} on {result['dataset']}/"
           f"{result['split']} ({bound['num_episodes']} episodes of T={result['episode_length']}):",
           f"  loss {bound['loss']:.3f} +- {bound['loss_stderr']:.3f} nats per image "
           f"(reconstruction {bound['reconstruction']:.3f}, {terms})"]
  if "kl_memory" in bound:
    lines.append(f"  KL(q(M|X) || p(M)) / T = {bound['kl_memory']:.3f} nats (not in the loss)")
  if "bits_per_dim" in bound:
    lines.append(f"  {bound['bits_per_dim']:.4f} bits/dim")
  if "iw_loss" in bound:
    lines.append(f"  importance-weighted NLL (k={bound['importance_samples']}): "
                 f"{bound['iw_loss']:.3f} nats"
                 + (f", {bound['iw_bits_per_dim']:.4f} bits/dim" if "iw_bits_per_dim" in bound
                    else ""))
  fidelity = result.get("generation_fidelity")
  if fidelity and fidelity["results"]:
    it = fidelity["iterations"][-1]
    prior = "" if fidelity["conditioned"] else "; VAE prior samples, the chance reference"
    lines.append(f"  one-shot generation ({fidelity['num_samples']} samples from each of "
                 f"{fidelity['num_episodes']} episodes of {fidelity['conditioning_size']} "
                 f"images, after {it} iterations{prior}): is a sample's nearest neighbour "
                 "(pixel L2) among the episode's images or among as many images of other "
                 "classes, class for class?")
    for label, r in fidelity["results"].items():
      lines.append(f"    {label} classes: nn_in_conditioning {r['nn_in_conditioning'][-1]:.3f} "
                   f"+- {r['nn_in_conditioning_stderr'][-1]:.3f} (chance 0.5), distance_ratio "
                   f"{r['distance_ratio'][-1]:.3f} +- {r['distance_ratio_stderr'][-1]:.3f}")
  lines.append(f"  wrote {os.path.join(result['out_dir'], EVAL_FILE)}"
               + (f" and {len(result['figures'])} figures" if result["figures"] else ""))
  return "\n".join(lines)
