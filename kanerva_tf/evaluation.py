"""Evaluation of a trained run: test bounds, importance-weighted estimates and the paper's figures.

`run_evaluation(workdir, out_dir, ...)` restores a run (`kanerva_tf.runs`), evaluates it on a
TFDS split and writes `<out_dir>/eval.json` and PNG figures; `eval.py` only turns flags into
that call. The pieces are usable on their own:

  * `evaluate_bound(model, dataset, ...)`: the negative variational lower bound per sample
    (eq. 12 / T for the Kanerva Machine, eq. 1 for the VAE) and its terms, in nats, averaged
    over all episodes; optionally an importance-weighted (IW) estimate of the negative
    log-likelihood (`importance_log_likelihood`).
  * `bound_sweep` / `plot_bound_sweep`: the bound against the episode size T and the number of
    classes per episode (Fig. 6 right).
  * Figures: `plot_reconstructions` (Fig. 3 left), `plot_generation` (Fig. 4, 5; Fig. 8 for the
    VAE), `plot_denoising` (Fig. 3 right), `plot_interpolation` (Fig. 7).

Gaussian-likelihood models (colour data) are evaluated on dequantised inputs x + U(0, 1/256),
as they are trained (Appendix C): the density of a continuous x on bins of width 1/256 then
bounds the probability of the 8-bit image, so `bits_per_dim` = (nats + HWD log 256) /
(HWD log 2) is a valid upper bound on the discrete negative log-likelihood in bits per
dimension. Bernoulli models (binary Omniglot) report nats only.

Every function is deterministic given its `seed` (stateless sampling; the data sampling of
`kanerva_tf.data.episode_dataset` is stateless too). Figures are drawn with matplotlib's
object-oriented API on an Agg canvas (no pyplot, no global backend change).

Shapes follow the package glossary (`kanerva_tf/__init__.py`); k is the number of importance
samples.
"""

import io
import json
import math
import numbers
import os
import weakref
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorflow_probability.python.internal import samplers

from kanerva_tf import data as data_lib
from kanerva_tf import runs
from kanerva_tf.dnc_model import DNCMachine
from kanerva_tf.model import KanervaMachine
from kanerva_tf.model import stateless_seed
from kanerva_tf.model import _split_normal  # the model's own (mean, softplus scale) split

__all__ = [
    "EPISODE_SIZES", "CLASS_COUNTS", "GENERATION_ITERATIONS", "evaluate_bound",
    "importance_log_likelihood", "address_diagnostics", "bound_sweep", "plot_bound_sweep",
    "plot_reconstructions",
    "plot_generation", "plot_denoising", "plot_interpolation", "corrupt_with_block",
    "run_evaluation", "format_summary", "EVAL_FILE",
]

EVAL_FILE = "eval.json"
EPISODE_SIZES = (16, 32, 64, 128, 256)   # Fig. 6 right
CLASS_COUNTS = (2, 4, 12, None)          # None = 'all': no class restriction
GENERATION_ITERATIONS = (0, 2, 4, 6, 8)  # Fig. 4, 5 and 8 columns
CONDITIONING_SIZE = 12                   # Fig. 4: "conditioned on 12 random examples"
DENOISE_BLOCK = 12                       # Fig. 3 right: 12x12 blocks on 28x28 images
_IW_IMAGES_PER_CHUNK = 4096              # decoded images per importance-sampling chunk
_LOG_2PI = float(np.log(2. * np.pi))


# ============================================================================ compiled calls
# One tf.function per (model, kind), kept as long as the model lives; retracing happens only
# for new shapes (reduce_retracing makes T and B symbolic after the second shape). The
# functions reach the model through a weak reference, so the cache does not keep it alive.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled(model, kind, make):
  """`make(model_ref)` -> tf.function, cached per model and `kind`."""
  per_model = _COMPILED.setdefault(model, {})
  if kind not in per_model:
    per_model[kind] = make(weakref.ref(model))
  return per_model[kind]


_seed = stateless_seed


def _is_gaussian(model):
  return model.config.likelihood == "gaussian"


def _bound_fn(model):
  dequantize = _is_gaussian(model)

  def make(model_ref):
    @tf.function(reduce_retracing=True)
    def bound(x, seed):
      out = model_ref()(x, training=False, seed=seed, dequantize=dequantize)
      return {k: v for k, v in out.items()}
    return bound
  return _compiled(model, "bound", make)


def _normal_log_prob(x, mean, scale):
  """log N(x; mean, diag scale^2) summed over the last axis `[...]`."""
  z = (x - mean) / scale
  return -tf.reduce_sum(0.5 * tf.square(z) + tf.math.log(scale) + 0.5 * _LOG_2PI, axis=-1)


def _chunk_size(num_samples, images_per_sample):
  """Largest divisor of k whose chunk decodes at most `_IW_IMAGES_PER_CHUNK` images (>= 1)."""
  limit = max(1, _IW_IMAGES_PER_CHUNK // max(1, images_per_sample))
  return max(d for d in range(1, min(num_samples, limit) + 1) if num_samples % d == 0)


def _iw_fn(model, num_samples, chunk):
  """A tf.function (x [B, T, H, W, D], seed) -> log p_hat(x_t) `[B, T]` for static k, chunk."""
  is_km = isinstance(model, KanervaMachine)
  is_dnc = isinstance(model, DNCMachine)
  dequantize = _is_gaussian(model)

  def make(model_ref):
    @tf.function(reduce_retracing=True)
    def iw(x, seed):
      model = model_ref()
      seeds = samplers.split_seed(seed, 3)
      x = model._dequantize(x, dequantize, seeds[0])
      embedding = model.encoder(x)                                     # [B, T, 2C]
      if is_km:
        # Write once: y ~ q(y|x), z ~ q(z|x) -> q(M|X) (model.write on the dequantised x,
        # which model.write's [0, 1] input check would reject).
        write_seeds = samplers.split_seed(seeds[1], 2)
        mean_y, scale_y = model.q_y_params(embedding, False, None)    # [B, T, Y]
        memory = model._write(embedding, model.write_weights(mean_y, scale_y, write_seeds[0]),
                              write_seeds[1])
        log_w_fn = lambda s: _km_log_weights(model, x, embedding, memory, chunk, s)
      elif is_dnc:
        # Write once, as the model does: [y_t, z_t], y ~ q(y|x), z ~ q(z|x), in order.
        mean_y, scale_y = model.q_y_params(embedding, False, None)    # [B, T, Y]
        state = model._write(embedding, mean_y, scale_y, seeds[1])[0]
        log_w_fn = lambda s: model.importance_log_weights(x, embedding, state, chunk, s)
      else:
        log_w_fn = lambda s: _vae_log_weights(model, x, embedding, chunk, s)
      num_chunks = num_samples // chunk
      acc = tf.fill(tf.shape(x)[:2], tf.constant(-np.inf, tf.float32))  # [B, T]
      for i in tf.range(num_chunks):
        log_w = log_w_fn(samplers.fold_in(seeds[2], tf.cast(i, tf.int32)))  # [chunk, B, T]
        acc = tf.reduce_logsumexp(tf.concat([acc[tf.newaxis], log_w], 0), axis=0)
      return acc - float(np.log(num_samples))
    return iw
  return _compiled(model, ("iw", num_samples, chunk), make)


def _vae_log_weights(model, x, embedding, k, seed):
  """log p(x|z) + log N(z; 0, I) - log q(z|x) for k samples z ~ q(z|x): `[k, B, T]`."""
  mean, scale = _split_normal(embedding)                              # [B, T, C]
  shape = tf.concat([[k], tf.shape(mean)], 0)
  z = mean + scale * tf.random.stateless_normal(shape, seed)           # [k, B, T, C]
  x_k = tf.broadcast_to(x, tf.concat([[k], tf.shape(x)], 0))          # [k, B, T, H, W, D]
  return (model.log_likelihood(x_k, model.decode(z))
          + _normal_log_prob(z, 0., 1.) - _normal_log_prob(z, mean, scale))


def _km_log_weights(model, x, embedding, memory, k, seed):
  """Importance log-weights of k samples (y, z) ~ q(y|x) q(z|x, y, M): `[k, B, T]`.

  log w = log p(x|z) + log p(z|y, M) + log N(y; 0, I) - log q(z|x, y, M) - log q(y|x), with
  p(z|y, M) read from the written memory as in training (eq. 6 with R; eq. 19 with
  `distribution_memory`).
  """
  seeds = samplers.split_seed(seed, 2)
  mean_y, scale_y = model.q_y_params(embedding, False, None)           # [B, T, Y]
  b, t = tf.shape(mean_y)[0], tf.shape(mean_y)[1]
  y = mean_y + scale_y * tf.random.stateless_normal(
      tf.concat([[k], tf.shape(mean_y)], 0), seeds[0])                 # [k, B, T, Y]
  w = model.addressing_weights(y)                                      # [k, B, T, K]
  # The memory has batch shape [B]: read the k*T queries of each episode together.
  w_b = tf.reshape(tf.transpose(w, [1, 0, 2, 3]), [b, k * t, -1])      # [B, k*T, K]
  prior_mean, prior_scale = model._memory_prior_on_z(memory, w_b)     # [B, k*T, C]
  prior_scale = tf.broadcast_to(prior_scale, tf.shape(prior_mean))

  def unfold(v):                                                       # [B, k*T, C] -> [k, B, T, C]
    return tf.transpose(tf.reshape(v, [b, k, t, -1]), [1, 0, 2, 3])
  prior_mean, prior_scale = unfold(prior_mean), unfold(prior_scale)
  embedding_k = tf.broadcast_to(embedding, tf.concat([[k], tf.shape(embedding)], 0))
  mean_z, scale_z = model.q_z_params(embedding_k, prior_mean, prior_scale)
  z = mean_z + scale_z * tf.random.stateless_normal(tf.shape(mean_z), seeds[1])
  x_k = tf.broadcast_to(x, tf.concat([[k], tf.shape(x)], 0))
  return (model.log_likelihood(x_k, model.decode(z))
          + _normal_log_prob(z, prior_mean, prior_scale) - _normal_log_prob(z, mean_z, scale_z)
          + _normal_log_prob(y, 0., 1.) - _normal_log_prob(y, mean_y, scale_y))


# ============================================================================ bounds
def importance_log_likelihood(model, episode, num_samples, seed):
  """Importance-weighted estimate of log p(x_t) per observation, `[B, T]` (nats).

  ```none
  log p(x) >= E log (1/k) sum_i p(x, h_i) / q(h_i | x),   h_i ~ q(h | x)   (Burda et al., 2015)
  ```

  * VAE: h = z, q(z|x) from the encoder, p(x, z) = p(x|z) N(z; 0, I).
  * Kanerva Machine: per episode the memory is written once (y_t ~ q(y_t|x_t), z_t ~ q(z_t|x_t),
    q(M|X) as in `KanervaMachine.write`); then, with M fixed to the written posterior memory
    mean R (mean-field, as in training; with `distribution_memory`, eq. 19's predictive over M),
    h = (y, z) ~ q(y|x) q(z|x, y, M) and p(x, y, z | M) = p(x|z) p(z|y, M) N(y; 0, I). This is
    an estimate of the *conditional* likelihood log p(x_t | M), like the paper's "conditional
    NLL" (section 4.1), not of the marginal log p(X).
  * DNC baseline: the episode is written once into the DNC as in `DNCMachine.call`; then
    h = (y, z) ~ q(y|x) p(z|y, M) (no bottom-up stream: q(z|x, y, M) = p(z|y, M)), so
    log w = log p(x|z) + log N(y; 0, I) - log q(y|x) (`DNCMachine.importance_log_weights`):
    again an estimate of log p(x_t | M).

  The estimate rises with k towards log p(x_t) (VAE) or log p(x_t | M) (Kanerva Machine).
  For k = 1 its expectation is the negative bound with analytic KLs replaced by their Monte
  Carlo estimates: for the VAE exactly the model's loss; for the Kanerva Machine eq. 12 with
  the read samples y_t drawn independently of the write, as `KanervaMachine.call` does. (An
  earlier version of `call` read x_t with the very y_t that wrote it; this estimate exposed
  that as optimistic: after 1000 Omniglot steps, loss 177.7 nats vs -log p_hat(x_t | M) =
  215.2 (k=1), 186.6 (k=10), 179.9 (k=100).)
  Gaussian models see dequantised inputs (module docstring), the same noise for all k samples.

  Args:
    model: a `KanervaMachine` or `VAE`.
    episode: float32 `[B, T, H, W, D]` in [0, 1].
    num_samples: k >= 1 (evaluated in chunks of at most ~4096 decoded images).
    seed: stateless seed.

  Returns:
    float32 `[B, T]`.
  """
  num_samples = _check_int("importance_samples", num_samples, minimum=1)
  x = model.check_images(episode)
  chunk = _chunk_size(num_samples, int(np.prod(x.shape[:2])))
  return _iw_fn(model, num_samples, chunk)(x, _seed(seed))


def evaluate_bound(model, dataset, num_batches=None, seed=0, importance_samples=0):
  """Means over all episodes of the negative bound per sample and its terms (nats).

  Args:
    model: a `KanervaMachine` or `VAE`.
    dataset: a finite `tf.data.Dataset` (or iterable) of episodes `[B, T, H, W, D]`, or of
      (episodes, labels) pairs; e.g. `kanerva_tf.data.episode_dataset(..., repeat=False)`.
    num_batches: batches to use; None = the whole (finite) dataset.
    seed: stateless seed of the model's sampling (batch i uses fold_in(seed, i)).
    importance_samples: k; k > 0 adds the importance-weighted estimate with k samples
      (`importance_log_likelihood`).

  Returns:
    dict of floats: `loss` (negative bound, nats per sample), `loss_stderr` (standard error
    of the mean over episodes), the model's terms (`reconstruction`, `kl_z`; Kanerva
    Machine also `kl_y`, `kl_memory`, the last a diagnostic outside the loss), for a Gaussian
    likelihood `bits_per_dim`; with k > 0 `iw_loss` (-log p_hat(x), nats per sample),
    `iw_loss_stderr`, `importance_samples` and, Gaussian, `iw_bits_per_dim`; and
    `num_episodes` (int).
  """
  importance_samples = _check_int("importance_samples", importance_samples, minimum=0)
  if num_batches is not None:
    num_batches = _check_int("num_batches", num_batches, minimum=1)
    if isinstance(dataset, tf.data.Dataset):
      dataset = dataset.take(num_batches)
  elif isinstance(dataset, tf.data.Dataset) and (
      dataset.cardinality() == tf.data.INFINITE_CARDINALITY):
    raise ValueError("evaluate_bound: the dataset is infinite; pass num_batches or a finite "
                     "dataset (episode_dataset(..., repeat=False)).")
  seed = _seed(seed)
  bound = _bound_fn(model)
  sums, per_episode, per_episode_iw, batches = {}, [], [], 0
  for i, element in enumerate(dataset):
    if num_batches is not None and i >= num_batches:
      break
    x = element[0] if isinstance(element, (tuple, list)) else element
    x = model.check_images(tf.convert_to_tensor(x))
    step_seed, iw_seed = tf.unstack(samplers.split_seed(samplers.fold_in(seed, i), 2))
    out = bound(x, step_seed)
    size = int(x.shape[0])
    for key, value in out.items():
      if key != "per_example_loss":
        sums[key] = sums.get(key, 0.) + float(value) * size
    per_episode.append(out["per_example_loss"].numpy().astype(np.float64))
    if importance_samples:
      log_p = importance_log_likelihood(model, x, importance_samples, iw_seed)  # [B, T]
      per_episode_iw.append(-np.mean(log_p.numpy().astype(np.float64), axis=1))
    batches += 1
  if not batches:
    raise ValueError("evaluate_bound: the dataset yielded no batches.")
  episodes = np.concatenate(per_episode)
  n = episodes.size
  result = {key: value / n for key, value in sums.items()}
  result["loss"] = float(np.mean(episodes))  # = the mean of the batch means (equal sizes)
  result["loss_stderr"] = _stderr(episodes)
  if _is_gaussian(model):
    result["bits_per_dim"] = float(model.bits_per_dim(result["loss"]))
  if importance_samples:
    iw = np.concatenate(per_episode_iw)  # [num_episodes]
    result.update(iw_loss=float(np.mean(iw)), iw_loss_stderr=_stderr(iw),
                  importance_samples=importance_samples)
    if _is_gaussian(model):
      result["iw_bits_per_dim"] = float(model.bits_per_dim(result["iw_loss"]))
  result["num_episodes"] = int(n)
  return result


def address_diagnostics(model, episode, seed=0):
  """How a Kanerva Machine addresses its memory, measured on episodes `[B, T, H, W, D]`.

  Diagnoses whether the addresses depend on the image (the paper's model needs them to, to
  read back the code of x_t rather than an episode average). With e = e(x) the encoder
  output, q(y|x) = N(mu_y(x), s_y(x)^2) (no input noise: evaluation mode), and two
  independent address samples w, w' of the same image (eq. 5):

    embedding_std: std of e across the B*T images, averaged over units;
    q_y_scale: mean of s_y;  q_y_mean_std: std of mu_y across images, averaged over dims;
    w_norm: mean ||w||;
    w_cos_same: mean cosine between w and w' of the same image;
    w_cos_other: mean cosine between the w of two different images of an episode (None
      when T = 1);
    retrieval_r2: 1 - sum_t ||w'_t^T R - z_t||^2 / sum_t ||z_t - mean_t z_t||^2, with R the
      posterior mean after writing the episode (eq. 9-11) as the model writes (addresses w,
      or the mean address with `write_address="mean"`) and z_t the mean
      of q(z_t|x_t): the fraction of the within-episode variation of the written codes that a
      read recovers. 0 = the read gives the episode average, 1 = exact recall;
    code_norm: sqrt(mean_t ||z_t||^2), the size of the written codes;
    code_spread: sqrt(mean_t ||z_t - mean_t z_t||^2), their within-episode spread; a
      code_norm far above code_spread means the codes share an offset that the memory
      stores for every image alike.

  Returns:
    dict of Python floats (JSON-serialisable) with the keys above.
  """
  _require_km(model, "address_diagnostics")
  x = model.check_images(episode)
  seeds = samplers.split_seed(stateless_seed(seed), 2)
  embedding = model.encoder(x)                                        # [B, T, 2C]
  mean_y, scale_y = model.q_y_params(embedding, False, seeds[0])      # [B, T, Y]
  ys = mean_y + scale_y * tf.random.stateless_normal(
      tf.concat([[2], tf.shape(mean_y)], 0), seeds[1])                # [2, B, T, Y]
  w, w_read = tf.unstack(model.addressing_weights(ys))               # [B, T, K] each
  z, _ = _split_normal(embedding)                                     # [B, T, C]
  # The memory is written as the model writes (a sample w, or the mean of q(y|x) with
  # write_address="mean") and read with an independent sample w', as eq. 12 reads.
  w_write = model.addressing_weights(mean_y) if model.config.write_address == "mean" else w
  memory = model.prior().update(w_write, z, noise_variance=model.config.noise_variance)
  read = memory.read(w_read)                                          # [B, T, C]

  def flat_std(v):
    return float(tf.reduce_mean(tf.math.reduce_std(tf.reshape(v, [-1, v.shape[-1]]), axis=0)))

  unit, unit_read = tf.math.l2_normalize(w, -1), tf.math.l2_normalize(w_read, -1)
  gram = tf.einsum("btk,bsk->bts", unit, unit)                        # [B, T, T]
  t = tf.cast(tf.shape(gram)[-1], tf.float32)
  other = ((tf.reduce_sum(gram) - tf.reduce_sum(tf.linalg.diag_part(gram)))
           / (tf.cast(tf.shape(gram)[0], tf.float32) * t * (t - 1.)))
  centred = z - tf.reduce_mean(z, axis=1, keepdims=True)
  r2 = 1. - tf.reduce_sum(tf.square(read - z)) / tf.reduce_sum(tf.square(centred))
  return {
      "embedding_std": flat_std(embedding),
      "q_y_scale": float(tf.reduce_mean(scale_y)),
      "q_y_mean_std": flat_std(mean_y),
      "w_norm": float(tf.reduce_mean(tf.norm(w, axis=-1))),
      "w_cos_same": float(tf.reduce_mean(tf.reduce_sum(unit * unit_read, -1))),
      "w_cos_other": float(other) if t > 1 else None,  # episodes of one image: no pairs
      "retrieval_r2": float(r2),
      "code_norm": float(tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(z), -1)))),
      "code_spread": float(tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(centred), -1)))),
  }


def _stderr(values):
  return float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.


def _class_label(num_classes):
  return "all" if num_classes is None else str(num_classes)


def bound_sweep(model, data_kwargs, split, *, episode_sizes=EPISODE_SIZES,
                class_counts=CLASS_COUNTS, num_images=None, batch_size=16, seed=0):
  """The bound against episode size T and classes per episode (Fig. 6 right).

  Every point is evaluated on fresh test episodes (`episode_dataset(..., repeat=False)`) with
  about `num_images` images (ceil(num_images / T) episodes; None = one pass over the split).
  Points that cannot be drawn (more classes than the split has, than T, T larger than the
  split for 'all', or no labels) are None.

  Args:
    model: a `KanervaMachine` or `VAE`.
    data_kwargs: {"dataset", "data_dir", "image_size", "binarize", "grayscale"}.
    split: TFDS split.
    episode_sizes: the T values.
    class_counts: ints, None = 'all' (no class restriction).
    num_images, batch_size, seed: see above; B is reduced to the number of episodes if fewer.

  Returns:
    {"episode_sizes": [T...], "class_counts": ["2", ..., "all"], "loss": {label: [nats or
     None per T]}, "bits_per_dim": {...} (Gaussian only), "num_episodes": {label: [...]},
     "skipped": {label: reason}}.
  """
  kwargs = dict(data_kwargs)
  name = kwargs.pop("dataset")
  info = data_lib.dataset_info(name, split, **kwargs)
  sizes = [_check_int("episode size", t, minimum=1) for t in episode_sizes]
  labels = [_class_label(c) for c in class_counts]
  result = {"episode_sizes": sizes, "class_counts": labels, "loss": {}, "num_episodes": {},
            "skipped": {}}
  if _is_gaussian(model):
    result["bits_per_dim"] = {}
  for c, label in zip(class_counts, labels):
    losses, counts, bpd = [], [], []
    reason = _class_count_problem(c, info)
    if reason:
      result["skipped"][label] = reason
      logging.info("Bound sweep: skipping %s classes: %s", label, reason)
    for t in sizes:
      if reason or (c is not None and c > t) or (c is None and t > info.num_examples):
        losses.append(None), counts.append(0), bpd.append(None)
        continue
      num_episodes = (math.ceil(info.num_examples / t) if num_images is None
                      else max(1, math.ceil(num_images / t)))
      b = min(batch_size, num_episodes)
      ds = data_lib.episode_dataset(name, split, batch_size=b, episode_length=t, seed=seed,
                                    num_classes=c, repeat=False, num_episodes=num_episodes,
                                    **kwargs)
      out = evaluate_bound(model, ds, seed=seed)
      logging.info("Bound sweep: T=%d, %s classes: %.3f nats (%d episodes)", t, label,
                   out["loss"], out["num_episodes"])
      losses.append(out["loss"]), counts.append(out["num_episodes"])
      bpd.append(out.get("bits_per_dim"))
    result["loss"][label] = losses
    result["num_episodes"][label] = counts
    if _is_gaussian(model):
      result["bits_per_dim"][label] = bpd
  return result


def _class_count_problem(num_classes, info):
  """Why episodes of `num_classes` classes cannot be drawn from the split, or None."""
  if num_classes is None:
    return None
  if info.num_classes is None:
    return f"split of {info.name!r} has no labels"
  if num_classes > info.num_classes:
    return f"split of {info.name!r} has only {info.num_classes} classes"
  return None


def plot_bound_sweep(sweep, path, title=None):
  """Line plot of `bound_sweep` results: loss (nats) against T, one line per class count."""
  fig = _figure((6, 4))
  ax = fig.add_subplot()
  for label in sweep["class_counts"]:
    points = [(t, v) for t, v in zip(sweep["episode_sizes"], sweep["loss"][label])
              if v is not None]
    if points:
      t, v = zip(*points)
      ax.plot(t, v, marker="o", label=f"{label} classes" if label != "all" else "all classes")
  ax.set_xscale("log", base=2)
  ax.set_xticks(sweep["episode_sizes"], [str(t) for t in sweep["episode_sizes"]])
  ax.set_xlabel("episode size T")
  ax.set_ylabel("test loss: negative bound per sample (nats)")
  ax.set_title(title or "Test bound vs episode size (Fig. 6 right)")
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  _save(fig, path)


# ============================================================================ figures
def _figure(size, layout=None):
  fig = Figure(figsize=size, layout=layout)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path, dpi=100):
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buf.getvalue())


_PAD_RGB = (0.72, 0.8, 0.92)  # light blue between cells and in empty cells


def _mosaic(images, pad=1):
  """Images `[R, Cols, H, W, D]` (NaN = empty cell) -> one RGB array `[R(H+p)+p, Cols(W+p)+p, 3]`.

  One-channel images are drawn ink-dark as in the paper (1 = black: RGB 1 - x); colour images
  as they are. Values are clipped to [0, 1].
  """
  images = np.asarray(images, np.float32)
  r, c, h, w, d = images.shape
  out = np.empty((r * (h + pad) + pad, c * (w + pad) + pad, 3), np.float32)
  out[:] = _PAD_RGB
  for i in range(r):
    for j in range(c):
      cell = images[i, j]
      if np.isnan(cell).all():
        continue
      cell = np.clip(cell, 0., 1.)
      cell = np.repeat(1. - cell, 3, axis=-1) if d == 1 else cell[..., :3]
      out[pad + i * (h + pad):pad + i * (h + pad) + h,
          pad + j * (w + pad):pad + j * (w + pad) + w] = cell
  return out


def _show(ax, mosaic, title=None, col_labels=None, row_labels=None, cell=None, pad=1):
  """Draws a `_mosaic`, with optional labels under the columns and left of the rows."""
  ax.imshow(mosaic, interpolation="nearest")
  ax.set_xticks([]), ax.set_yticks([])
  if cell is not None:
    h, w = cell
    if col_labels is not None:
      ax.set_xticks([pad + j * (w + pad) + (w - 1) / 2 for j in range(len(col_labels))],
                    col_labels, fontsize=7)
    if row_labels is not None:
      ax.set_yticks([pad + i * (h + pad) + (h - 1) / 2 for i in range(len(row_labels))],
                    row_labels, fontsize=7)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if title:
    ax.set_title(title, fontsize=9)


def _grid(images, cols):
  """Images `[N, H, W, D]` -> `[ceil(N/cols), cols, H, W, D]`, empty cells NaN."""
  images = np.asarray(images, np.float32)
  rows = math.ceil(len(images) / cols)
  out = np.full((rows * cols,) + images.shape[1:], np.nan, np.float32)
  out[:len(images)] = images
  return out.reshape((rows, cols) + images.shape[1:])


def plot_reconstructions(model, episodes, path, *, seed=0, max_episodes=4, max_images=12):
  """Originals and reconstructions (Fig. 3 left), one pair of rows per episode.

  Kanerva Machine: each episode is written to the memory and read back once
  (`reconstruct`); VAE: x -> z ~ q(z|x) -> E[x|z].

  Args:
    model: a `KanervaMachine` or `VAE`.
    episodes: float32 `[B, T, H, W, D]`; the first `max_episodes` episodes are written whole,
      their first `max_images` images shown.
    path: output PNG.
  """
  x = tf.convert_to_tensor(episodes)[:max_episodes]
  recon = model.reconstruct(x, seed=_seed(seed)).numpy()[:, :max_images]    # [B, T', H, W, D]
  x = x.numpy()[:, :max_images]
  rows = np.stack([x, recon], axis=1).reshape((-1,) + x.shape[1:])   # [2B, T', H, W, D]
  labels = [f"{kind} {i}" for i in range(x.shape[0]) for kind in ("data", "recon")]
  h, w = x.shape[2:4]
  fig = _figure((0.6 * x.shape[1] + 1.2, 0.6 * len(rows) + 0.8))
  _show(fig.add_subplot(), _mosaic(rows), cell=(h, w), row_labels=labels,
        title=f"{type(model).__name__}: episodes (data) and reconstructions")
  fig.tight_layout()
  _save(fig, path)


def plot_generation(model, conditioning, path, *, num_samples=8,
                    iterations=GENERATION_ITERATIONS, seed=0):
  """Samples refined by iterative reading (Fig. 4, 5); for the VAE, fed-back samples (Fig. 8).

  Kanerva Machine: for each conditioning episode the episode is written to the memory and
  `generate(memory, num_samples, max(iterations))` draws y ~ N(0, I), z ~ p(z|y, M),
  x ~ p(x|z), then reads iteratively; the columns are the samples after the given
  iterations. One panel per episode: the conditioning images above, the samples below.
  VAE: `generate(num_samples, max(iterations))` (z ~ N(0, I), outputs fed back through the
  encoder), one panel; `conditioning` is ignored.

  Args:
    model: a `KanervaMachine` or `VAE`.
    conditioning: dict {panel title: episode float32 `[T, H, W, D]`} (Kanerva Machine).
    path: output PNG.
    num_samples: rows of samples per panel.
    iterations: the iterations shown (column 0 = before any reading).
    seed: stateless seed; panel i uses fold_in(seed, i).
  """
  iterations = tuple(int(i) for i in iterations)
  last = max(iterations)
  seed = _seed(seed)
  is_km = isinstance(model, _MEMORY_MODELS)  # generates from a written memory (KM or DNC)
  panels = []  # (title, conditioning images [T, H, W, D] or None, samples [N, cols, H, W, D])
  if is_km:
    if not conditioning:
      raise ValueError("plot_generation: the Kanerva Machine needs conditioning episodes.")
    for i, (title, episode) in enumerate(conditioning.items()):
      write_seed, gen_seed = tf.unstack(samplers.split_seed(samplers.fold_in(seed, i), 2))
      episode = tf.convert_to_tensor(episode)[tf.newaxis]              # [1, T, H, W, D]
      memory = model.write(episode, seed=write_seed)
      samples = model.generate(memory, num_samples, last, seed=gen_seed)[:, 0]  # [it+1, N, ...]
      panels.append((title, episode[0].numpy(), samples.numpy()))
  else:
    samples = model.generate(num_samples, last, seed=seed)            # [it+1, N, H, W, D]
    panels.append(("VAE samples fed back (Fig. 8)", None, samples.numpy()))
  h, w = panels[0][2].shape[2:4]
  cols = len(iterations)
  fig = _figure((max(2.4, 0.5 * cols + 0.7) * len(panels), 0.5 * (num_samples + 3) + 1.4),
                layout="constrained")
  subfigs = fig.subfigures(1, len(panels), squeeze=False)[0]
  for sub, (title, images, samples) in zip(subfigs, panels):
    chosen = np.transpose(samples[list(iterations)], (1, 0, 2, 3, 4))  # [N, cols, H, W, D]
    if images is not None:
      cond = _grid(images, cols)
      axes = sub.subplots(2, 1, height_ratios=[cond.shape[0], num_samples])
      _show(axes[0], _mosaic(cond), title=f"{title}\nconditioning ({len(images)} images)")
      ax = axes[1]
      ax.set_title("samples", fontsize=8)
    else:
      ax = sub.subplots(1, 1)
      ax.set_title(title, fontsize=9)
    _show(ax, _mosaic(chosen), cell=(h, w), col_labels=[str(i) for i in iterations])
    ax.set_xlabel("iterations", fontsize=8)
  _save(fig, path)


def corrupt_with_block(images, seed, block_size=None, fill="noise"):
  """Corrupts each image with one randomly placed block (section 4.3, Fig. 3 right).

  Args:
    images: float32 `[N, H, W, D]`.
    seed: stateless seed.
    block_size: (bh, bw); default the paper's 12x12 on 28x28 scaled to the image,
      (max(1, round(12 H / 28)), max(1, round(12 W / 28))).
    fill: "noise" (each pixel and channel of the block independently 0 or 1 with probability
      1/2: random binary noise) or "zeros".

  Returns:
    (corrupted `[N, H, W, D]`, corners int `[N, 2]` = (row, col) of each block's top left,
     (bh, bw)).
  """
  if fill not in ("noise", "zeros"):
    raise ValueError(f"fill must be 'noise' or 'zeros'; got {fill!r}.")
  x = tf.convert_to_tensor(images, tf.float32)
  n, h, w, _ = x.shape
  if block_size is None:
    block_size = (max(1, round(DENOISE_BLOCK * h / 28)), max(1, round(DENOISE_BLOCK * w / 28)))
  bh, bw = (min(int(block_size[0]), h), min(int(block_size[1]), w))
  seeds = samplers.split_seed(_seed(seed), 3)
  rows = tf.random.stateless_uniform([n], seeds[0], 0, h - bh + 1, dtype=tf.int32)
  cols = tf.random.stateless_uniform([n], seeds[1], 0, w - bw + 1, dtype=tf.int32)
  r = tf.range(h)[None, :, None]
  c = tf.range(w)[None, None, :]
  inside = ((r >= rows[:, None, None]) & (r < rows[:, None, None] + bh) &
            (c >= cols[:, None, None]) & (c < cols[:, None, None] + bw))[..., None]  # [N, H, W, 1]
  if fill == "noise":
    value = tf.cast(tf.random.stateless_uniform(tf.shape(x), seeds[2]) < 0.5, tf.float32)
  else:
    value = tf.zeros_like(x)
  corners = tf.stack([rows, cols], axis=-1)
  return tf.where(inside, value, x), corners.numpy(), (bh, bw)


def plot_denoising(model, episode, path, *, num_images=6, iterations=3, block_size=None,
                   fill="noise", seed=0):
  """Denoising by iterative reading (Fig. 3 right; Kanerva Machine only).

  The clean episode is written to the memory; its first `num_images` images, corrupted by
  `corrupt_with_block`, are the queries of `read(..., iterations)`. Columns: original,
  corrupted (the block outlined in red), then the reads after 1, 2, ... iterations.

  Args:
    model: a `KanervaMachine`.
    episode: float32 `[T, H, W, D]`.
    path: output PNG.
  """
  _require_km(model, "plot_denoising", _MEMORY_MODELS)
  seeds = samplers.split_seed(_seed(seed), 3)
  x = tf.convert_to_tensor(episode)
  memory = model.write(x[tf.newaxis], seed=seeds[0])
  clean = x[:num_images]
  corrupted, corners, (bh, bw) = corrupt_with_block(clean, seeds[1], block_size, fill)
  reads = model.read(corrupted[tf.newaxis], memory, iterations, seed=seeds[2])[:, 0]
  columns = [clean.numpy(), corrupted.numpy()] + list(reads.numpy())  # each [N, H, W, D]
  grid = np.stack(columns, axis=1)                                    # [N, 2 + it, H, W, D]
  h, w = grid.shape[2:4]
  fig = _figure((0.7 * grid.shape[1] + 0.8, 0.7 * grid.shape[0] + 1.))
  ax = fig.add_subplot()
  _show(ax, _mosaic(grid), cell=(h, w),
        col_labels=["original", "corrupted"] + [str(i + 1) for i in range(iterations)],
        title=f"Denoising: {bh}x{bw} block of "
              f"{'random binary noise' if fill == 'noise' else 'zeros'}\nthen reads after "
              f"1..{iterations} iterations")
  for i, (r, c) in enumerate(corners):   # outline each block in the 'corrupted' column
    ax.add_patch(patches.Rectangle((1 + (w + 1) + c - 0.5, 1 + i * (h + 1) + r - 0.5), bw, bh,
                                   fill=False, edgecolor="red", linewidth=0.8))
  fig.tight_layout()
  _save(fig, path)


def plot_interpolation(model, episode, path, *, num_pairs=4, num_steps=8, seed=0):
  """Interpolation in the space of addressing weights w (Fig. 7; Kanerva Machine only).

  The episode is written to the memory; pairs (x_0, x_1), (x_2, x_3), ... of its images give
  w_a, w_b from the means of q(y|x), and `interpolate` reads and decodes
  (1 - alpha) w_a + alpha w_b for alpha in [0, 1]. Columns: image a, the `num_steps` reads,
  image b.

  Args:
    model: a `KanervaMachine`.
    episode: float32 `[T, H, W, D]`, T >= 2.
    path: output PNG.
  """
  _require_km(model, "plot_interpolation")
  x = tf.convert_to_tensor(episode)
  num_pairs = min(num_pairs, int(x.shape[0]) // 2)
  if num_pairs < 1:
    raise ValueError(f"plot_interpolation needs an episode of >= 2 images; got {x.shape[0]}.")
  memory = model.write(x[tf.newaxis], seed=_seed(seed))
  a, b = x[0:2 * num_pairs:2], x[1:2 * num_pairs:2]                   # [P, H, W, D]
  memory_p = type(memory)(tf.repeat(memory.loc, num_pairs, axis=0),
                          tf.repeat(memory.row_covariance, num_pairs, axis=0))
  reads = model.interpolate(a, b, memory_p, num_steps).numpy()         # [P, steps, H, W, D]
  grid = np.concatenate([a.numpy()[:, None], reads, b.numpy()[:, None]], axis=1)
  h, w = grid.shape[2:4]
  alphas = np.linspace(0., 1., num_steps)
  fig = _figure((0.6 * grid.shape[1] + 0.8, 0.6 * grid.shape[0] + 1.))
  _show(fig.add_subplot(), _mosaic(grid), cell=(h, w),
        col_labels=["a"] + [f"{v:.2g}" for v in alphas] + ["b"],
        title="Interpolation of addressing weights w (columns: alpha)")
  fig.tight_layout()
  _save(fig, path)


_MEMORY_MODELS = (KanervaMachine, DNCMachine)  # models that write and read a memory


def _require_km(model, what, classes=(KanervaMachine,)):
  if not isinstance(model, classes):
    raise ValueError(f"{what} needs a {' or '.join(c.__name__ for c in classes)} (it reads a "
                     f"memory); got {type(model).__name__}.")


# ============================================================================ the whole job
def _check_int(what, value, minimum):
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{what} must be an int >= {minimum}; got {value!r}.")
  return int(value)


def _check_class_counts(class_counts):
  out = []
  for c in class_counts:
    if c is None or c == "all":
      out.append(None)
    else:
      out.append(_check_int("class count", c, minimum=1))
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
    class_counts: classes per episode for the sweep and the generation figure; None or "all"
      = no class restriction.
    command_line: recorded in eval.json (e.g. sys.argv and the flag values).
    model_overrides: `ModelConfig` fields changed for the evaluation (`runs.restore_model`),
      recorded in eval.json.

  Returns:
    The dict written to eval.json: "bound" (see `evaluate_bound`), "sweep" (see
    `bound_sweep`, or None), "addressing" (see `address_diagnostics`; None for the VAE),
    "figures" {name: file name}, "notes", and the run's identity:
    "workdir", "checkpoint", "step", "model_type", "likelihood", "dataset", "data", "split",
    "episode_length", "batch_size", "num_batches", "seed", "importance_samples",
    "command_line", "out_dir".
  """
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  importance_samples = _check_int("importance_samples", importance_samples, minimum=0)
  if num_batches is not None:
    num_batches = _check_int("num_batches", num_batches, minimum=1)
  if episode_length is not None:
    episode_length = _check_int("episode_length", episode_length, minimum=1)
  seed = _check_int("seed", seed, minimum=-2**63)
  episode_sizes = tuple(_check_int("episode size", t, minimum=1) for t in episode_sizes)
  class_counts = _check_class_counts(class_counts)

  model, run_config, step = runs.restore_model(workdir, checkpoint, model_overrides)
  checkpoint = checkpoint or tf.train.latest_checkpoint(runs.checkpoint_dir(workdir))
  notes = []
  model_type = run_config["model_type"]
  config = model.config
  is_km = isinstance(model, KanervaMachine)
  data_kwargs = _data_kwargs(run_config, dataset, data_dir)
  name = data_kwargs["dataset"]
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

  written = {}
  if figures:
    def path(file):
      return os.path.join(out_dir, file)
    plot_reconstructions(model, first, path("reconstructions.png"), seed=seed)
    written["reconstructions"] = "reconstructions.png"
    conditioning = {}
    reads_memory = isinstance(model, _MEMORY_MODELS)  # KM or DNC
    if reads_memory:
      size = CONDITIONING_SIZE
      for c in class_counts:
        problem = _class_count_problem(c, info)
        if problem is None and c is not None and c > size:
          problem = f"more classes than the {size} conditioning images"
        if problem is None and c is None and size > info.num_examples:
          problem = f"the split has fewer than {size} images"
        if problem:
          notes.append(f"generation: {_class_label(c)} classes skipped: {problem}")
          continue
        episode = next(iter(data_lib.episode_dataset(
            name, split, batch_size=1, episode_length=size, seed=seed, num_classes=c,
            repeat=False, num_episodes=1, **load_kwargs)))[0]
        conditioning[f"{'KM' if is_km else 'DNC'} ({_class_label(c)} classes)"] = episode
    if conditioning or not reads_memory:
      plot_generation(model, conditioning, path("generation.png"), seed=seed)
      written["generation"] = "generation.png"
    if is_km:
      plot_denoising(model, first[0], path("denoising.png"), seed=seed)
      written["denoising"] = "denoising.png"
      if t >= 2:
        plot_interpolation(model, first[0], path("interpolation.png"), seed=seed)
        written["interpolation"] = "interpolation.png"
      else:
        notes.append("interpolation skipped: episodes of one image have no pairs")
    elif reads_memory:
      plot_denoising(model, first[0], path("denoising.png"), seed=seed)
      written["denoising"] = "denoising.png"
      notes.append("interpolation is a Kanerva Machine figure (it mixes addressing weights w): "
                   "skipped for the DNC")
    else:
      notes.append("denoising and interpolation are Kanerva Machine figures (they read a "
                   "memory): skipped for the VAE")
    if sweep is not None:
      plot_bound_sweep(sweep, path("bound_vs_episode_size.png"),
                       title=f"{model_type} on {name}/{split}: test bound vs episode size")
      written["bound_vs_episode_size"] = "bound_vs_episode_size.png"
  for note in notes:
    logging.info("Note: %s", note)

  result = {
      "workdir": str(workdir), "checkpoint": checkpoint, "step": step, "model_type": model_type,
      "likelihood": config.likelihood, "dataset": name, "data": data_kwargs, "split": split,
      "episode_length": t, "batch_size": batch_size, "num_batches": num_batches, "seed": seed,
      "importance_samples": importance_samples, "bound": bound, "sweep": sweep,
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
  lines.append(f"  wrote {os.path.join(result['out_dir'], EVAL_FILE)}"
               + (f" and {len(result['figures'])} figures" if result["figures"] else ""))
  return "\n".join(lines)
