"""The numbers of an evaluation: test bounds, importance-weighted estimates, address diagnostics.

  * `evaluate_bound(model, dataset, ...)`: the negative variational lower bound per sample
    (eq. 12 / T for the Kanerva Machine, eq. 1 for the VAE) and its terms, in nats, averaged
    over all episodes; optionally an importance-weighted (IW) estimate of the negative
    log-likelihood (`importance_log_likelihood`).
  * `address_diagnostics`: does a Kanerva Machine address its memory by image (eq. 5, 9-11)?
  * `bound_sweep`: the bound against the episode size T and the number of classes per
    episode (Fig. 6 right).
  * `corrupt_with_block`: the corruption of the denoising experiment (section 4.3).

Fig. 4 as a number (do generated samples resemble what was written?) is in
`kanerva_tf.fidelity`; the figures of these numbers are in `kanerva_tf.figures`; `kanerva_tf.evaluate_run` runs
everything for a training run and writes eval.json (`eval.py`).

Gaussian-likelihood models (colour data) are evaluated on dequantised inputs x + U(0, 1/256),
as they are trained (Appendix C): the density of a continuous x on bins of width 1/256 then
bounds the probability of the 8-bit image, so `bits_per_dim` = (nats + HWD log 256) /
(HWD log 2) is a valid upper bound on the discrete negative log-likelihood in bits per
dimension. Bernoulli models (binary Omniglot) report nats only.

Every function is deterministic given its `seed` (stateless sampling; the data sampling of
`kanerva_tf.data.episode_dataset` is stateless too).

Shapes follow the package glossary (`kanerva_tf/__init__.py`); k is the number of importance
samples.
"""

import math
import numbers
import weakref

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_probability.python.internal import samplers

from kanerva_tf import data as data_lib
from kanerva_tf.dnc_model import DNCMachine
from kanerva_tf.model import KanervaMachine
from kanerva_tf.model import stateless_seed
from kanerva_tf.model import _split_normal  # the model's own (mean, softplus scale) split

__all__ = [
    "EPISODE_SIZES", "CLASS_COUNTS", "DENOISE_BLOCK", "MEMORY_MODELS", "evaluate_bound",
    "importance_log_likelihood", "address_diagnostics", "bound_sweep", "corrupt_with_block",
    "likelihood_scale_range", "class_label", "class_count_problem", "check_int",
    "require_model", "standard_error",
]

EPISODE_SIZES = (16, 32, 64, 128, 256)   # Fig. 6 right
CLASS_COUNTS = (2, 4, 12, None)          # None = 'all': no class restriction
DENOISE_BLOCK = 12                       # Fig. 3 right: 12x12 blocks on 28x28 images
_IW_IMAGES_PER_CHUNK = 4096              # decoded images per importance-sampling chunk
_LOG_2PI = float(np.log(2. * np.pi))
MEMORY_MODELS = (KanervaMachine, DNCMachine)  # models that write and read a memory


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
      embedding = model.embed(x)                                     # [B, T, 2C]
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
        state = model._write(embedding, mean_y, scale_y, seeds[1])
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


# ======================================================================= bounds, diagnostics
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
  num_samples = check_int("importance_samples", num_samples, minimum=1)
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
  importance_samples = check_int("importance_samples", importance_samples, minimum=0)
  if num_batches is not None:
    num_batches = check_int("num_batches", num_batches, minimum=1)
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
  result["loss_stderr"] = standard_error(episodes)
  if _is_gaussian(model):
    result["bits_per_dim"] = float(model.bits_per_dim(result["loss"]))
  if importance_samples:
    iw = np.concatenate(per_episode_iw)  # [num_episodes]
    result.update(iw_loss=float(np.mean(iw)), iw_loss_stderr=standard_error(iw),
                  importance_samples=importance_samples)
    if _is_gaussian(model):
      result["iw_bits_per_dim"] = float(model.bits_per_dim(result["iw_loss"]))
  result["num_episodes"] = int(n)
  return result


def likelihood_scale_range(model, episodes):
  """Range of a Gaussian p(x|z)'s per-pixel scale on episodes `[B, T, H, W, D]`.

  The scale is the decoder's softplus output + 1e-3 (`decode`), at z = the mean of q(z|x)
  (the code each image writes), over every pixel and channel of every image: a check that
  the Gaussian likelihood neither collapses (scale -> 1e-3, a bound that runs off to -inf)
  nor blows up. A Bernoulli likelihood has no scale: {}.

  Returns:
    {"pixel_scale_min", "pixel_scale_median", "pixel_scale_max"} (floats), or {}.
  """
  if not _is_gaussian(model):
    return {}
  x = model.check_images(tf.convert_to_tensor(episodes))
  mean_z = model.embed(x)[..., :model.config.code_size]              # [B, T, C]
  scale = model.decode(mean_z)["scale"].numpy()                      # [B, T, H, W, D]
  return {"pixel_scale_min": float(np.min(scale)),
          "pixel_scale_median": float(np.median(scale)),
          "pixel_scale_max": float(np.max(scale))}


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
  require_model(model, "address_diagnostics")
  x = model.check_images(episode)
  seeds = samplers.split_seed(stateless_seed(seed), 2)
  embedding = model.embed(x)                                        # [B, T, 2C]
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




def standard_error(values):
  """The standard error of the mean of a 1-D numpy array (0 for one value)."""
  return float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.


def class_label(num_classes):
  """The label of a class count in eval.json and the figures: "2", ..., "all" for None."""
  return "all" if num_classes is None else str(num_classes)


# ============================================================================ sweeps
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
  sizes = [check_int("episode size", t, minimum=1) for t in episode_sizes]
  labels = [class_label(c) for c in class_counts]
  result = {"episode_sizes": sizes, "class_counts": labels, "loss": {}, "num_episodes": {},
            "skipped": {}}
  if _is_gaussian(model):
    result["bits_per_dim"] = {}
  for c, label in zip(class_counts, labels):
    losses, counts, bpd = [], [], []
    reason = class_count_problem(c, info)
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


def class_count_problem(num_classes, info):
  """Why episodes of `num_classes` classes cannot be drawn from the split, or None."""
  if num_classes is None:
    return None
  if info.num_classes is None:
    return f"split of {info.name!r} has no labels"
  if num_classes > info.num_classes:
    return f"split of {info.name!r} has only {info.num_classes} classes"
  return None


# ============================================================================ corruption
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


# ============================================================================ checks
# Shared with kanerva_tf.figures and kanerva_tf.evaluate_run.
def require_model(model, what, classes=(KanervaMachine,)):
  """ValueError unless `model` is one of `classes` (`what` needs a memory to read)."""
  if not isinstance(model, classes):
    raise ValueError(f"{what} needs a {' or '.join(c.__name__ for c in classes)} (it reads a "
                     f"memory); got {type(model).__name__}.")


def check_int(what, value, minimum):
  """`value` as an int; ValueError naming `what` unless it is an int (not a bool) >= minimum."""
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{what} must be an int >= {minimum}; got {value!r}.")
  return int(value)
