"""Fig. 4 as a number: do samples generated from a written memory resemble the images that
were written, more than other test images of the same class structure?

  * `nearest_neighbour_fidelity(samples, conditioning, others)`: the pixel-space
    nearest-neighbour test of one set of samples.
  * `generation_fidelity(model, data_kwargs, split, ...)`: test episodes of C classes written
    and sampled as `kanerva_tf.figures.plot_generation` draws them (Fig. 4, 5, 8), scored by
    `nearest_neighbour_fidelity` after each reading iteration; the VAE is the chance reference.

Every function is deterministic given its `seed`. Shapes follow the package glossary
(`kanerva_tf/__init__.py`); E episodes, M conditioning images, N samples per episode.
"""

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_probability.python.internal import samplers

from kanerva_tf import data as data_lib
from kanerva_tf.evaluation import MEMORY_MODELS
from kanerva_tf.evaluation import check_int
from kanerva_tf.evaluation import class_count_problem
from kanerva_tf.evaluation import class_label
from kanerva_tf.evaluation import standard_error
from kanerva_tf.model import stateless_seed

__all__ = ["GENERATION_ITERATIONS", "FIDELITY_CLASS_COUNTS", "generation_fidelity",
           "nearest_neighbour_fidelity"]

GENERATION_ITERATIONS = (0, 2, 4, 6, 8)  # Fig. 4, 5 and 8 columns
FIDELITY_CLASS_COUNTS = (2, 4, 12)       # Fig. 4: one-shot generation from 2, 4, 12 classes


def nearest_neighbour_fidelity(samples, conditioning, others):
  """How much closer generated samples are to the images written than to other images.

  Distances are Euclidean (L2) distances between images in pixel space, ||a - b||_2 over all
  H*W*D values in [0, 1] (the samples are image means, the data images 0/1 or grey values):
  the nearest-neighbour test needs no trained feature space, so it cannot credit a model for
  its own encoder. For every sample s of episode e

    d_cond(s) = min_j ||s - a_j||,  a_j the conditioning images of e (a);
    d_other(s) = min_j ||s - o_j||, o_j the other images of e (b) (test images of classes
      disjoint from e's);

  and `s` counts as "nearest neighbour in (a)" if d_cond < d_other (ties count 1/2, so a
  sample equally far from both sets scores chance).

  Args:
    samples: `[E, N, H, W, D]`, N samples per episode (E episodes).
    conditioning: `[E, M, H, W, D]`, the images each episode wrote (a).
    others: `[E, M', H, W, D]`, the comparison images of each episode (b); the test is fair
      (chance = 1/2) when M' = M.

  Returns:
    dict of floats:
      nn_in_conditioning: the fraction of samples whose nearest neighbour is in (a), mean over
        episodes of the per-episode fraction (all episodes have N samples); chance 0.5 for
        samples unrelated to (a) when M' = M. `nn_in_conditioning_stderr`: its standard
        error over episodes.
      distance_ratio: mean d_cond / mean d_other (means over all E*N samples); < 1: the
        samples are closer to what was written. 0 when the samples are conditioning images;
        inf when they are other images (d_other = 0). `distance_ratio_stderr`: the standard
        error of this ratio estimator over episodes (delta method: sqrt(sum_e (c_e - R o_e)^2
        / (E (E - 1))) / mean_e o_e, with c_e, o_e the per-episode mean distances; 0 for one
        episode, nan when mean d_other = 0).
      distance_conditioning, distance_other: the mean d_cond and d_other, with `_stderr`s.
      num_episodes: E (int).
  """
  s, a, o = (np.asarray(v, np.float64) for v in (samples, conditioning, others))
  for what, v in (("samples", s), ("conditioning", a), ("others", o)):
    if v.ndim != 5 or 0 in v.shape:
      raise ValueError(f"nearest_neighbour_fidelity: {what} must be non-empty images "
                       f"[E, N, H, W, D]; got shape {v.shape}.")
  if not s.shape[0] == a.shape[0] == o.shape[0] or not (
      s.shape[2:] == a.shape[2:] == o.shape[2:]):
    raise ValueError("nearest_neighbour_fidelity: samples, conditioning and others need the "
                     "same number of episodes E and image shape [H, W, D]; got shapes "
                     f"{s.shape}, {a.shape}, {o.shape}.")
  e = s.shape[0]
  s, a, o = (v.reshape(v.shape[:2] + (-1,)) for v in (s, a, o))        # [E, N, HWD] ...

  def nearest(images):                                                # [E, N]
    return np.sqrt(np.min(np.sum(np.square(s[:, :, None] - images[:, None]), -1), -1))
  d_cond, d_other = nearest(a), nearest(o)
  in_cond = np.where(d_cond < d_other, 1., np.where(d_cond == d_other, 0.5, 0.))
  fraction = in_cond.mean(1)                                          # [E]
  c_e, o_e = d_cond.mean(1), d_other.mean(1)                          # [E]
  c_mean, o_mean = float(c_e.mean()), float(o_e.mean())
  if o_mean > 0:
    ratio = c_mean / o_mean
    ratio_stderr = (float(np.sqrt(np.sum(np.square(c_e - ratio * o_e)) / (e * (e - 1)))
                          / o_mean) if e > 1 else 0.)
  else:
    ratio, ratio_stderr = (float("inf") if c_mean > 0 else float("nan")), float("nan")
  return {
      "nn_in_conditioning": float(fraction.mean()),
      "nn_in_conditioning_stderr": standard_error(fraction),
      "distance_ratio": float(ratio), "distance_ratio_stderr": ratio_stderr,
      "distance_conditioning": c_mean, "distance_conditioning_stderr": standard_error(c_e),
      "distance_other": o_mean, "distance_other_stderr": standard_error(o_e),
      "num_episodes": int(e),
  }


def _generated(model, episodes, num_samples, iterations, seed):
  """Samples as `kanerva_tf.figures.plot_generation` draws them: `[it + 1, B, N, H, W, D]`.

  A memory model writes each episode and `generate`s from its memory (iterative reading);
  the VAE `generate`s B*N samples from its prior, fed back through the encoder (Fig. 8),
  ignoring the episodes.
  """
  write_seed, gen_seed = tf.unstack(samplers.split_seed(seed, 2))
  if isinstance(model, MEMORY_MODELS):
    memory = model.write(episodes, seed=write_seed)
    return model.generate(memory, num_samples, iterations, seed=gen_seed)
  b = int(episodes.shape[0])
  out = model.generate(b * num_samples, iterations, seed=gen_seed)     # [it+1, B*N, H, W, D]
  return tf.reshape(out, [iterations + 1, b, num_samples] + list(out.shape[2:]))


def _matched_others(rng, by_class, episode_labels):
  """Indices of images matching an episode's class structure from classes outside it.

  For each class of the episode with k images (largest k first), an unused class not in the
  episode with at least k images is drawn at random and k of its images without replacement.
  Returns int `[M]` (M = len(episode_labels)), or None when the split has too few classes.
  """
  classes, counts = np.unique(episode_labels, return_counts=True)
  excluded = set(int(k) for k in classes)
  candidates = [k for k in rng.permutation(np.array(sorted(by_class), np.int64))
                if int(k) not in excluded]
  used, out = set(), []
  for need in sorted(counts, reverse=True):
    pick = next((k for k in candidates if k not in used and len(by_class[k]) >= need), None)
    if pick is None:
      return None
    used.add(pick)
    out.append(rng.choice(by_class[pick], need, replace=False))
  return np.concatenate(out)


def generation_fidelity(model, data_kwargs, split, *, class_counts=FIDELITY_CLASS_COUNTS,
                        num_episodes=32, conditioning_size=12, num_samples=8,
                        iterations=GENERATION_ITERATIONS, batch_size=16, seed=0):
  """Do one-shot samples (Fig. 4) reflect the classes written to memory? A number per C.

  For each class count C, `num_episodes` test episodes of `conditioning_size` (M) images from
  C classes are drawn as for the figure (`episode_dataset(..., num_classes=C)`); each is
  written to the memory and `num_samples` (N) samples are generated from it with iterative
  reading, exactly as `kanerva_tf.figures.plot_generation` draws them (`_generated`). Each
  episode also gets M other test images with the same class structure (`_matched_others`):
  for every class of the episode with k images, k images (without replacement) of another
  class that is not in the episode. `nearest_neighbour_fidelity` then asks, for the samples
  after each of `iterations` reading steps, whether their nearest neighbour (pixel L2) is
  among the episode's images or the others.

  Matching the class structure makes the two sets exchangeable for samples that ignore the
  memory, so chance is 1/2 at every C. With M images drawn uniformly from the other classes
  instead (about M classes), the pretrained VAE's prior samples scored 0.38 +- 0.03 at C = 2
  and 0.54 +- 0.02 at C = 12 (128 episodes): twelve images of twelve classes cover image
  space better than twelve of two classes, a bias that has nothing to do with memory.

  The VAE has no memory: its samples come from the prior (fed back `max(iterations)` times),
  unconditioned, and are scored against the same kind of episodes: the chance reference
  (nn_in_conditioning ~ 0.5, distance_ratio ~ 1).

  Args:
    model: a `KanervaMachine`, `DNCMachine` or `VAE`.
    data_kwargs: {"dataset", "data_dir", "image_size", "binarize", "grayscale"}.
    split: TFDS split (needs labels).
    class_counts: the C values; None = 'all' (no class restriction; the others are still of
      classes not in the episode).
    num_episodes: E episodes per class count (B is reduced to E if fewer).
    conditioning_size: M, images per episode (Fig. 4: 12) and other images per episode.
    num_samples: N samples per episode.
    iterations: the reading iterations scored (0 = the first sample, before any reading).
    batch_size: episodes written at once.
    seed: seed of the episodes, the other images and the model's sampling.

  Returns:
    {"class_counts": ["2", ...], "iterations": [...], "num_episodes": E, "num_samples": N,
     "conditioning_size": M, "conditioned": False for the VAE, "distance": "pixel L2",
     "results": {label: {key: [value per iteration]}} with the keys of
     `nearest_neighbour_fidelity` except num_episodes, "skipped": {label: reason}}.
  """
  num_episodes = check_int("num_episodes", num_episodes, minimum=1)
  size = check_int("conditioning_size", conditioning_size, minimum=1)
  num_samples = check_int("num_samples", num_samples, minimum=1)
  batch_size = check_int("batch_size", batch_size, minimum=1)
  seed = check_int("seed", seed, minimum=-2**63)
  iterations = tuple(check_int("iteration", i, minimum=0) for i in iterations)
  if not iterations:
    raise ValueError("generation_fidelity: iterations must not be empty.")
  counts = tuple(None if c is None or c == "all" else check_int("class count", c, minimum=1)
                 for c in class_counts)
  kwargs = dict(data_kwargs)
  name = kwargs.pop("dataset")
  images, labels, info = data_lib.load_split(name, split, **kwargs)   # uint8 [n, H, W, D]
  by_class = ({} if labels is None else
              {int(k): np.flatnonzero(labels == k) for k in np.unique(labels)})
  scale = 1. if info.binarize else 1. / 255.
  last = max(iterations)
  labels_out = [class_label(c) for c in counts]
  result = {"class_counts": labels_out, "iterations": list(iterations),
            "num_episodes": num_episodes, "num_samples": num_samples, "conditioning_size": size,
            "conditioned": isinstance(model, MEMORY_MODELS), "distance": "pixel L2",
            "results": {}, "skipped": {}}
  for ci, (c, label) in enumerate(zip(counts, labels_out)):
    reason = class_count_problem(c, info)
    if reason is None and labels is None:
      reason = f"split of {info.name!r} has no labels (needed for the other classes)"
    if reason is None and c is not None and c > size:
      reason = f"more classes than the {size} conditioning images"
    if reason is None and c is None and size > info.num_examples:
      reason = f"the split has fewer than {size} images"
    if reason:
      result["skipped"][label] = reason
      logging.info("Generation fidelity: skipping %s classes: %s", label, reason)
      continue
    b = min(batch_size, num_episodes)
    ds = data_lib.episode_dataset(name, split, batch_size=b, episode_length=size, seed=seed,
                                  num_classes=c, repeat=False, num_episodes=num_episodes,
                                  with_labels=True, **kwargs)
    count_seed = samplers.fold_in(stateless_seed(seed), ci)
    rng = np.random.default_rng([seed % 2**64, ci])
    samples, conditioning, others = [], [], []
    for i, (x, y) in enumerate(ds):
      samples.append(_generated(model, x, num_samples, last,
                                samplers.fold_in(count_seed, i)).numpy())  # [it+1, B, N, ...]
      conditioning.append(x.numpy())                                  # [B, M, H, W, D]
      for episode_labels in y.numpy():
        chosen = _matched_others(rng, by_class, episode_labels)
        if chosen is None:
          reason = ("too few classes outside an episode's classes to match its "
                    f"{len(np.unique(episode_labels))} classes")
          break
        others.append(images[chosen].astype(np.float32) * scale)
      if reason:
        break
    if reason:
      result["skipped"][label] = reason
      logging.info("Generation fidelity: skipping %s classes: %s", label, reason)
      continue
    samples = np.concatenate(samples, axis=1)[:, :num_episodes]       # [it+1, E, N, ...]
    conditioning = np.concatenate(conditioning)[:num_episodes]        # [E, M, H, W, D]
    others = np.stack(others)[:num_episodes]                          # [E, M, H, W, D]
    per_iteration = [nearest_neighbour_fidelity(samples[it], conditioning, others)
                     for it in iterations]
    result["results"][label] = {key: [p[key] for p in per_iteration]
                                for key in per_iteration[0] if key != "num_episodes"}
    logging.info("Generation fidelity, %s classes: nn_in_conditioning %s, distance_ratio %s "
                 "(iterations %s)", label, result["results"][label]["nn_in_conditioning"],
                 result["results"][label]["distance_ratio"], list(iterations))
  return result
