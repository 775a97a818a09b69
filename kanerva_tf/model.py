"""The Kanerva Machine (paper section 3) and its matched VAE baseline (section 4.1).

Both models take episodes `[B, T, H, W, D]` of float32 images in [0, 1] and return the
negative variational lower bound per sample (eq. 12 divided by T for the Kanerva Machine,
eq. 1 for the VAE) and each of its terms, in nats, as means over the batch.

Shapes follow the package glossary (`kanerva_tf/__init__.py`); Y is the size of y.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import prefer_static as ps
from tensorflow_probability.python.internal import samplers

from kanerva_tf import keras_fit
from kanerva_tf import networks
from kanerva_tf.config import MIN_SCALE, ModelConfig
from kanerva_tf.memory import KanervaMemory

tfd = tfp.distributions

__all__ = ["KanervaMachine", "VAE", "PRECISIONS", "check_image_values", "stateless_seed", "diag_normal_kl", "bernoulli_log_prob", "gaussian_log_prob"]

_MIN_SCALE = MIN_SCALE
# `precision` of a model -> the Keras dtype policy of its encoder and decoder networks.
PRECISIONS = ("float32", "bfloat16")
_NETWORK_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
_LOG_2PI = float(np.log(2. * np.pi))


# ----------------------------------------------------------------------------- math helpers
def stateless_seed(seed):
  """A stateless seed, int32 `[2]`, from None (a fresh random one), a Python int, or a
  `[2]` seed. Python ints map to (seed mod 2^31, seed // 2^31 mod 2^31), so the same int
  always gives the same samples (`samplers.sanitize_seed(int)` would draw a stateful,
  different seed on every call)."""
  if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
    seed = int(seed)
    return tf.constant([seed % 2**31, (seed // 2**31) % 2**31], tf.int32)
  return samplers.sanitize_seed(seed)



def _split_normal(params):
  """[..., 2X] network output -> (mean [..., X], scale [..., X]); scale = softplus + 1e-4."""
  mean, raw = tf.split(params, 2, axis=-1)
  return mean, tf.nn.softplus(raw) + _MIN_SCALE


def _sample_normal(mean, scale, seed):
  """Reparameterised sample mean + scale * eps with a stateless seed."""
  return mean + scale * tf.random.stateless_normal(tf.shape(mean), seed=seed, dtype=mean.dtype)


def diag_normal_kl(mean_q, scale_q, mean_p, scale_p):
  """KL(N(mean_q, diag scale_q^2) || N(mean_p, diag scale_p^2)), summed over the last axis.

  ```none
  KL = sum_i  log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2
  ```
  """
  var_ratio = tf.square(scale_q / scale_p)
  mahalanobis = tf.square((mean_q - mean_p) / scale_p)
  return 0.5 * tf.reduce_sum(var_ratio + mahalanobis - 1. - tf.math.log(var_ratio), axis=-1)


def bernoulli_log_prob(x, logits):
  """log p(x | logits) of independent Bernoullis, summed over [H, W, D]: `[...]`."""
  return -tf.reduce_sum(
      tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=[-3, -2, -1])


def gaussian_log_prob(x, mean, scale):
  """log N(x; mean, diag scale^2), summed over [H, W, D]: `[...]`."""
  z = (x - mean) / scale
  return -tf.reduce_sum(0.5 * tf.square(z) + tf.math.log(scale) + 0.5 * _LOG_2PI,
                        axis=[-3, -2, -1])


def iterate(body, iterations, loop_vars):
  """Runs `loop_vars = body(*loop_vars)` `iterations` times: unrolled for a Python int, a
  `tf.while_loop` for an integer `Tensor` (e.g. a SavedModel signature's input). The first
  loop variable is the step counter i."""
  if isinstance(iterations, int):
    for _ in range(iterations):
      loop_vars = body(*loop_vars)
    return loop_vars
  return tf.while_loop(lambda i, *_: i < iterations, body, loop_vars)


def check_image_values(images, what="episode", owner="kanerva_tf"):
  """`images` (float32) after run-time checks that they are finite and in [0, 1].

  The value checks of `_GenerativeModel.check_images`, also run on the host by the training
  input pipeline (`kanerva_tf.training`), so that the training step need not.

  Raises:
    tf.errors.InvalidArgumentError: "<owner>: <what> contains NaN or Inf.", or "<owner>:
      <what> values must be in [0, 1]" (when the tensor is evaluated).
  """
  x = tf.convert_to_tensor(images)
  with tf.control_dependencies([
      tf.debugging.assert_all_finite(x, f"{owner}: {what} contains NaN or Inf."),
      tf.debugging.assert_greater_equal(x, 0., message=f"{owner}: {what} values must be in "
                                        "[0, 1]; got a value < 0"),
      tf.debugging.assert_less_equal(x, 1., message=f"{owner}: {what} values must be in "
                                     "[0, 1]; got a value > 1"),
  ]):
    return tf.identity(x)


# ----------------------------------------------------------------------------- shared base
class _GenerativeModel(keras_fit.KerasFit, keras.Model):
  """Encoder, decoder, likelihood and input checks shared by `KanervaMachine` and `VAE`;
  Keras `compile` / `fit` / `evaluate` / `save` (`kanerva_tf.keras_fit`)."""

  # Scalars of `call` computed only with `diagnostics=True` (not in the loss).
  diagnostic_terms = ()

  def __init__(self, config=None, precision="float32", **kwargs):
    """`precision` (`PRECISIONS`): "float32", or "bfloat16": the encoder and decoder
    networks (the convolutions and their dense projections) run under Keras'
    "mixed_bfloat16" policy, bfloat16 computation with float32 variables, while everything
    else stays float32: `embed` and `decode` cast the networks' outputs to float32, so the
    memory's write and read (eq. 9-11, 6), the KLs and the likelihood (eq. 12) are float32."""
    super().__init__(**kwargs)
    if config is None:
      config = ModelConfig()
    if not isinstance(config, ModelConfig):
      raise TypeError(f"{type(self).__name__} needs a kanerva_tf.ModelConfig; got {config!r}.")
    if precision not in PRECISIONS:
      raise ValueError(f"{type(self).__name__}: precision must be one of {PRECISIONS}; "
                       f"got {precision!r}.")
    self.config = config
    self.precision = precision
    policy = _NETWORK_POLICY[precision]
    c = config.code_size
    image_channels = config.image_shape[-1]
    # Embedding e(x) of size 2C (Appendix C); for the VAE it is (mean, scale) of q(z|x).
    init = config.kernel_initializer
    self.encoder = networks.Encoder(config.num_filters, 2 * c, config.image_shape,
                                    kernel_initializer=init, name="encoder", dtype=policy)
    # Bernoulli: logits [.., D]; Gaussian: mean and scale per pixel [.., 2D].
    out = image_channels if config.likelihood == "bernoulli" else 2 * image_channels
    self.decoder = networks.Decoder(config.num_filters, config.image_shape,
                                    output_channels=out, kernel_initializer=init,
                                    name="decoder", dtype=policy)

  # -- keras plumbing
  def get_config(self):
    return {"name": self.name, "config": self.config.to_dict(), "precision": self.precision}

  @classmethod
  def from_config(cls, config):
    return cls(ModelConfig.from_dict(config["config"]), name=config.get("name"),
               precision=config.get("precision", "float32"))

  # -- inputs
  def check_images(self, images, rank=5, what="episode", check_values=True):
    """Checks images `[B, T, H, W, D]` (rank 5) or `[B, H, W, D]` (rank 4) and returns them.

    `check_values=False` skips the run-time value checks (NaN/Inf, [0, 1]): for callers whose
    input is already checked, e.g. the training step, whose input pipeline checks every
    batch on the host (`check_image_values`, `kanerva_tf.training`); the static checks
    (dtype, rank, shape) always run.

    Raises:
      TypeError: not float32 (no silent casting: convert uint8 with `tf.cast(x, tf.float32) / 255`).
      ValueError: wrong rank or image shape (static check).
      tf.errors.InvalidArgumentError: NaN/Inf or values outside [0, 1] (run-time check).
    """
    layout = "[B, T, H, W, D]" if rank == 5 else "[B, H, W, D]"
    x = tf.convert_to_tensor(images)
    if x.dtype != tf.float32:
      raise TypeError(
          f"{type(self).__name__}: {what} images must be float32 in [0, 1]; got dtype "
          f"{x.dtype.name}. Convert e.g. uint8 images with tf.cast(x, tf.float32) / 255.")
    if x.shape.rank is not None and x.shape.rank != rank:
      raise ValueError(
          f"{type(self).__name__}: {what} must be {layout} = [..., "
          f"{', '.join(map(str, self.config.image_shape))}] (rank {rank}); got shape "
          f"{x.shape} (rank {x.shape.rank}).")
    got = tuple(x.shape[-3:])
    if got != self.config.image_shape and None not in got:
      raise ValueError(
          f"{type(self).__name__}: {what} images must have shape (H, W, D) = "
          f"{self.config.image_shape} (ModelConfig.image_shape); got {got} in {layout} "
          f"shape {x.shape}.")
    if not check_values:
      return x
    return check_image_values(x, what, type(self).__name__)

  def embed(self, x):
    """The encoder's embedding e(x) `[..., 2C]` of images `[..., H, W, D]`, in float32
    whatever the encoder computes in (`precision`): the memory and the KLs are float32."""
    return tf.cast(self.encoder(x), tf.float32)

  def _dequantize(self, x, dequantize, seed):
    """Uniform U(0, 1/256) noise on Gaussian-likelihood inputs (Appendix C)."""
    if self.config.likelihood != "gaussian" or not dequantize:
      return x
    return x + tf.random.stateless_uniform(tf.shape(x), seed, maxval=1. / 256.)

  # -- likelihood p(x | z)
  def decode(self, z):
    """Decoder output for codes `[..., C]`: a dict with 'mean' `[..., H, W, D]` (Bernoulli
    probabilities, or the Gaussian mean clipped to [0, 1]) and the likelihood parameters
    ('logits', or 'loc' and 'scale')."""
    out = tf.cast(self.decoder(z), tf.float32)  # the likelihood in float32
    if self.config.likelihood == "bernoulli":
      return {"logits": out, "mean": tf.sigmoid(out)}
    loc, raw = tf.split(out, 2, axis=-1)
    # 'mean' is the image shown and fed back: the Gaussian mean clipped to [0, 1].
    return {"loc": loc, "scale": tf.nn.softplus(raw) + 1e-3,
            "mean": tf.clip_by_value(loc, 0., 1.)}

  def log_likelihood(self, x, params):
    """log p(x | z) summed over pixels, `[...]` (nats)."""
    if self.config.likelihood == "bernoulli":
      return bernoulli_log_prob(x, params["logits"])
    return gaussian_log_prob(x, params["loc"], params["scale"])

  def sample_images(self, params, seed):
    """A sample x ~ p(x | z) (Bernoulli), or the mean (Gaussian: pixel noise is not fed back)."""
    if self.config.likelihood == "bernoulli":
      u = tf.random.stateless_uniform(tf.shape(params["mean"]), seed)
      return tf.cast(u < params["mean"], tf.float32)
    return params["mean"]

  def _then_read(self, params, memory, iterations, seeds):
    """The first samples' means `[1, ...]` (decoded `params`), followed, for iterations > 0,
    by `iterations` reads of x ~ p(x|z) from `memory` (`self.read`): `[it + 1, ...]`.
    `iterations` is a Python int or a scalar tensor; `seeds`: (sampling, reading)."""
    outputs = params["mean"][tf.newaxis]
    if isinstance(iterations, int) and iterations == 0:
      return outputs
    x = self.sample_images(params, seeds[0])
    if isinstance(iterations, int):
      return tf.concat([outputs, self.read(x, memory, iterations, seeds[1])], axis=0)
    return tf.cond(iterations > 0,
                   lambda: tf.concat([outputs, self.read(x, memory, iterations, seeds[1])], 0),
                   lambda: outputs)

  def bits_per_dim(self, nats_per_sample):
    """Bits per dimension of 8-bit images from a dequantised per-sample bound in nats:
    (nats + HWD log 256) / (HWD log 2)."""
    dims = float(np.prod(self.config.image_shape))
    return (nats_per_sample + dims * np.log(256.)) / (dims * np.log(2.))


# ----------------------------------------------------------------------------- VAE
@keras.saving.register_keras_serializable(package="kanerva_tf")
class VAE(_GenerativeModel):
  """The matched VAE baseline: same encoder and decoder, prior N(0, I) on z (eq. 1).

  q(z|x) = N(e_mean(x), e_scale(x)) from the 2C embedding; loss per sample
  `-log p(x|z) + KL(q(z|x) || N(0, I))`.
  """

  def call(self, episode, training=False, seed=None, dequantize=None, diagnostics=True,
           check_inputs=True):
    """Negative bound of eq. 1 per sample, for episodes `[B, T, H, W, D]` (T ignored).

    `diagnostics` is accepted as by `KanervaMachine.call` (the VAE has no diagnostic terms);
    `check_inputs=False` skips the run-time value checks of the images (`check_images`).

    Returns:
      dict of scalars `loss`, `reconstruction`, `kl_z` (means over B, T, in nats) and
      `per_example_loss` `[B]` (mean over T).
    """
    x = self.check_images(episode, check_values=check_inputs)
    seeds = samplers.split_seed(stateless_seed(seed), 2)
    x = self._dequantize(x, training if dequantize is None else dequantize, seeds[0])
    mean, scale = _split_normal(self.embed(x))                     # [B, T, C]
    z = _sample_normal(mean, scale, seeds[1])
    reconstruction = -self.log_likelihood(x, self.decode(z))        # [B, T]
    kl_z = diag_normal_kl(mean, scale, tf.zeros_like(mean), tf.ones_like(scale))  # [B, T]
    per_example = tf.reduce_mean(reconstruction + kl_z, axis=-1)    # [B]
    return {
        "loss": tf.reduce_mean(per_example),
        "per_example_loss": per_example,
        "reconstruction": tf.reduce_mean(reconstruction),
        "kl_z": tf.reduce_mean(kl_z),
    }

  def reconstruct(self, episode, seed=None):
    """Mean reconstructions `[B, T, H, W, D]` through z ~ q(z|x)."""
    x = self.check_images(episode)
    mean, scale = _split_normal(self.embed(x))
    return self.decode(_sample_normal(mean, scale, stateless_seed(seed)))["mean"]

  def generate(self, num_samples, iterations=0, seed=None):
    """Samples z ~ N(0, I), decoded, then fed back `iterations` times (Fig. 8).

    `iterations` is a Python int or an integer scalar `Tensor` (a `tf.while_loop`).

    Returns:
      `[iterations + 1, num_samples, H, W, D]` image means.
    """
    seed = stateless_seed(seed)
    z = tf.random.stateless_normal([num_samples, self.config.code_size], seed)
    params = self.decode(z)

    def body(i, params, outputs):
      x_seed, z_seed = tf.unstack(samplers.split_seed(samplers.fold_in(seed, i), 2))
      x = self.sample_images(params, x_seed)
      mean, scale = _split_normal(self.embed(x))
      params = self.decode(_sample_normal(mean, scale, z_seed))
      return i + 1, params, outputs.write(i + 1, params["mean"])

    outputs = tf.TensorArray(tf.float32, size=iterations + 1,
                             element_shape=params["mean"].shape).write(0, params["mean"])
    _, _, outputs = iterate(body, iterations, (tf.constant(0), params, outputs))
    return outputs.stack()


# ----------------------------------------------------------------------------- Kanerva Machine
@keras.saving.register_keras_serializable(package="kanerva_tf")
class KanervaMachine(_GenerativeModel):
  """The Kanerva Machine: a VAE whose prior on z is read from a Bayesian memory.

  Generative model (eq. 3-6):   M ~ MN(R_0, U_0, I_C);  y_t ~ N(0, I);
    w_t = f(y_t)^T A  (eq. 5, rows of A L2-normalised);  z_t ~ N(w_t^T M, sigma^2 I)  (eq. 6);
    x_t ~ p(x_t | z_t)  (decoder; Bernoulli or Gaussian).
  Writing (eq. 8-11): y_t ~ q(y_t|x_t), z_t ~ q(z_t|x_t); q(M|X) = p(M | Y, Z) by
    `KanervaMemory.update`.  Reading (eq. 7): q(z_t | x_t, y_t, M) = MLP([e(x_t), w_t^T R]).
  Loss (eq. 12 / T, mean-field: R in place of M):
    -log p(x_t|z_t) + KL(q(y_t|x_t) || p(y_t)) + KL(q(z_t|x_t,y_t,M) || p(z_t|y_t,M)).
  With `config.distribution_memory` (Appendix F), writing integrates out q(z|x) (isotropic
  variance = mean of its diagonal variances) and reading uses eq. 19,
  p(z_t | y_t, R, U) = N(w_t^T R, (w_t^T U w_t + sigma^2) I).
  """

  loss_terms = ("loss", "reconstruction", "kl_y", "kl_z", "kl_memory")  # scalars of `call`
  diagnostic_terms = ("kl_memory",)  # only with call(..., diagnostics=True)

  def __init__(self, config=None, **kwargs):
    super().__init__(config, **kwargs)
    cfg = self.config
    k, c, s = cfg.memory_size, cfg.code_size, cfg.address_size
    init = cfg.kernel_initializer
    # q(y|x): the MLP outputs (mean, raw scale) per input, or only the mean when the scale is
    # one learned vector shared by all inputs (`ModelConfig.y_scale`).
    y_outputs = cfg.y_size if cfg.y_scale is not None else 2 * cfg.y_size
    self.q_y = networks.MLP(cfg.mlp_hidden_size, y_outputs, init, name="q_y")
    if cfg.y_scale is not None:
      raw = float(np.log(np.expm1(cfg.y_scale - _MIN_SCALE)))  # softplus(raw) + 1e-4 = y_scale
      self.q_y_scale_raw = self.add_weight(
          shape=(cfg.y_size,), initializer=keras.initializers.Constant(raw), name="q_y_scale_raw")
    self.key = networks.MLP(cfg.mlp_hidden_size, s, init, name="key")
    # No q(z|x,y,M) network without a bottom-up stream (read_posterior "prior", Appendix D).
    self.q_z = (None if cfg.read_posterior == "prior" else
                networks.MLP(cfg.mlp_hidden_size, 2 * c, init, name="q_z_read"))
    self.addresses = self.add_weight(
        shape=(k, s), initializer=keras.initializers.RandomNormal(stddev=1.), name="addresses")
    self.prior_loc = self.add_weight(shape=(k, c), initializer="zeros", name="prior_loc")  # R_0
    # U_0 = L L^T with L lower triangular, diag(L) = softplus(raw) > 0: positive definite;
    # with row_covariance="diagonal", L = diag(softplus(raw)), raw of shape [K].
    softplus_inv_one = float(np.log(np.expm1(1.)))
    if cfg.row_covariance == "diagonal":
      self.prior_scale_raw = self.add_weight(
          shape=(k,), initializer=keras.initializers.Constant(softplus_inv_one),
          name="prior_scale_raw")
    else:
      self.prior_scale_raw = self.add_weight(
          shape=(k, k), initializer=keras.initializers.Identity(gain=softplus_inv_one),
          name="prior_scale_raw")

  # -- the memory
  def prior(self):
    """The learned prior memory p(M) = MN(R_0, U_0, I_C) (eq. 4), batch shape []."""
    raw = tf.convert_to_tensor(self.prior_scale_raw)
    if self.config.row_covariance == "diagonal":
      return KanervaMemory(self.prior_loc, tf.linalg.diag(tf.square(tf.nn.softplus(raw) + 1e-3)),
                           name="prior_memory")
    diag = tf.nn.softplus(tf.linalg.diag_part(raw)) + 1e-3
    scale = tf.linalg.set_diag(tf.linalg.band_part(raw, -1, 0), diag)  # L [K, K]
    return KanervaMemory(self.prior_loc, tf.matmul(scale, scale, transpose_b=True),
                         name="prior_memory")

  def normalized_addresses(self):
    """A with rows of unit L2 norm, `[K, S]`."""
    return tf.math.l2_normalize(tf.convert_to_tensor(self.addresses), axis=-1)

  def addressing_weights(self, y):
    """w = f(y)^T A (eq. 5): y `[..., Y]` -> w `[..., K]`."""
    return self._address(self.key(y), self.normalized_addresses())

  @staticmethod
  def _address(key, addresses):
    """key `[..., S]`, A `[K, S]` -> key A^T `[..., K]`: one `[N, S] x [S, K]` matrix product
    (the broadcasting tf.einsum("...s,ks->...k") had a 7x slower gradient, and tf.tensordot
    transposed A and its gradient; bench/profile_step.py)."""
    flat = tf.reshape(key, ps.stack([-1, ps.shape(key)[-1]]))        # [N, S]
    w = tf.linalg.matmul(flat, addresses, transpose_b=True)           # [N, K]
    return tf.reshape(w, ps.concat([ps.shape(key)[:-1], ps.shape(addresses)[:1]], 0))

  def _write_and_read_weights(self, mean_y, scale_y, write_seed, read_seed):
    """(w_write, w_read) `[..., K]` of one training call: `write_weights(mean_y, scale_y,
    write_seed)` and `addressing_weights(y)` of a fresh y ~ q(y|x) (`read_seed`), computed
    with one pass of the key network f over both inputs stacked and A normalised once."""
    y_write = (mean_y if self.config.write_address == "mean"
               else _sample_normal(mean_y, scale_y, write_seed))
    y_read = _sample_normal(mean_y, scale_y, read_seed)
    w = self._address(self.key(tf.stack([y_write, y_read])), self.normalized_addresses())
    return tuple(tf.unstack(w))  # (not w[0], w[1]: two zero-filled slice gradients)

  def q_y_params(self, embedding, training, seed):
    """(mean, scale) of q(y|x) `[..., Y]`; N(0, 0.2^2) noise on its input when training."""
    if training and self.config.y_noise_std > 0:
      embedding = embedding + self.config.y_noise_std * tf.random.stateless_normal(
          tf.shape(embedding), seed)
    params = self.q_y(embedding)
    if self.config.y_scale is None:
      return _split_normal(params)
    scale = tf.nn.softplus(tf.convert_to_tensor(self.q_y_scale_raw)) + _MIN_SCALE  # [Y]
    return params, tf.broadcast_to(scale, tf.shape(params))

  def write_weights(self, mean_y, scale_y, seed):
    """Addresses w `[..., K]` that write x_t (eq. 8): from y_t ~ q(y_t|x_t) with
    `write_address="sample"`, or from the mean of q(y_t|x_t) with "mean" (the other
    one-point approximation of eq. 8's integral over y)."""
    if self.config.write_address == "mean":
      return self.addressing_weights(mean_y)
    return self.addressing_weights(_sample_normal(mean_y, scale_y, seed))

  def _write(self, embedding, w, seed, prior=None, q_z_x=None):
    """q(M|X) = p(M | Y, Z) with z_t ~ q(z_t|x_t) (eq. 8), or Appendix F's q integrated out.
    `q_z_x`: (mean, scale) of q(z|x), `_split_normal(embedding)`, when already computed."""
    mean, scale = _split_normal(embedding) if q_z_x is None else q_z_x  # q(z|x) [B, T, C]
    if self.config.distribution_memory:
      z, z_variance = mean, tf.reduce_mean(tf.square(scale), axis=-1)  # [B, T, C], [B, T]
    else:
      z, z_variance = _sample_normal(mean, scale, seed), None
    prior = self.prior() if prior is None else prior
    posterior = prior.update(
        w, z, noise_variance=self.config.noise_variance, z_variance=z_variance,
        method=self.config.write_method, chunk_size=self.config.chunk_size)
    if self.config.row_covariance == "diagonal":  # keep only the rows' variances (Fig. 10)
      posterior = KanervaMemory(
          posterior.loc, tf.linalg.diag(tf.linalg.diag_part(posterior.row_covariance)),
          validate_args=False, name="posterior_memory")
    return posterior

  def _memory_prior_on_z(self, memory, w):
    """p(z | y, M) as (mean `[..., C]`, scale broadcastable to it): eq. 6 or eq. 19."""
    if self.config.distribution_memory:
      pred = memory.predictive(w, self.config.noise_variance)
      return pred.mean(), pred.stddev()
    return memory.read(w), tf.constant(np.sqrt(self.config.noise_variance), tf.float32)

  def q_z_params(self, embedding, prior_mean, prior_scale=None, encoder_mean=None):
    """(mean, scale) of q(z_t | x_t, y_t, M) `[..., C]` from the MLP on [e(x_t), w_t^T R]
    (section 3.2). `read_posterior="encoder_skip"`: the MLP's mean output is a correction
    added to the mean of q(z_t|x_t), mean = e_mean(x_t) + MLP_mean (the family of "concat",
    reparameterised); "prior": no bottom-up stream (Appendix D), q(z_t|x_t,y_t,M) =
    p(z_t|y_t,M) = N(prior_mean, prior_scale²), `prior_scale` (broadcastable to
    `prior_mean`) required. `encoder_mean`: e_mean(x_t) = `embedding[..., :C]` when already
    computed (the mean of q(z|x) that the write used), so that it is not sliced again."""
    if self.config.read_posterior == "prior":
      if prior_scale is None:
        raise ValueError("q_z_params: read_posterior='prior' needs prior_scale, the scale of "
                         "p(z|y,M) (from _memory_prior_on_z).")
      return prior_mean, tf.broadcast_to(prior_scale, tf.shape(prior_mean))
    mean, scale = _split_normal(self.q_z(tf.concat([embedding, prior_mean], axis=-1)))
    if self.config.read_posterior == "encoder_skip":
      if encoder_mean is None:
        encoder_mean = embedding[..., :self.config.code_size]  # e_mean: no softplus needed
      mean = encoder_mean + mean
    return mean, scale

  def _read_step(self, embedding, memory, training, seed):
    """One read: y ~ q(y|x), w, p(z|y,M), z ~ q(z|x,y,M). Returns a dict of tensors."""
    seeds = samplers.split_seed(seed, 3)
    mean_y, scale_y = self.q_y_params(embedding, training, seeds[0])  # [.., Y]
    y = _sample_normal(mean_y, scale_y, seeds[1])
    w = self.addressing_weights(y)                                     # [.., K]
    prior_mean, prior_scale = self._memory_prior_on_z(memory, w)      # [.., C]
    mean_z, scale_z = self.q_z_params(embedding, prior_mean, prior_scale)
    z = _sample_normal(mean_z, scale_z, seeds[2])
    return dict(mean_y=mean_y, scale_y=scale_y, w=w, prior_mean=prior_mean,
                prior_scale=prior_scale, mean_z=mean_z, scale_z=scale_z, z=z)

  def call(self, episode, training=False, seed=None, dequantize=None, kl_y_weight=None,
           diagnostics=True, check_inputs=True):
    """Negative bound of eq. 12 divided by T, for episodes `[B, T, H, W, D]`.

    `diagnostics` (a Python bool: a separate trace inside a `tf.function`): with False, the
    terms outside the loss (`diagnostic_terms`: `kl_memory`, KL(q(M|X) || p(M)) / T, a
    matrix-normal KL with a log-determinant of the K x K U per episode) are not computed
    and are absent from the result; the loss and its gradients are the same. The training
    loop passes False on the steps whose metrics it does not log. `check_inputs=False`
    skips the run-time value checks of the images (`check_images`), for input checked
    already (the training input pipeline).

    `kl_y_weight` (None = 1) weighs KL(y) in `loss` and `per_example_loss` (a training-time
    warm-up, `TrainConfig.kl_y_warmup_steps`; with a weight other than 1 the loss is not
    eq. 12); the reported `kl_y` is always unweighted.

    The episode is written to the memory with one sample y_t, z_t per image (eq. 8); each
    x_t is then read back from the posterior memory with an independent y_t ~ q(y_t|x_t),
    as in the inner expectation of eq. 12.

    Returns:
      dict of scalars (means over B and T, nats per sample): `loss`, `reconstruction`
      (-log p(x|z)), `kl_y`, `kl_z`, `kl_memory` (KL(q(M|X) || p(M)) / T, a diagnostic not in
      the loss, as in eq. 12; only with `diagnostics`) and `per_example_loss` `[B]`.
    """
    x = self.check_images(episode, check_values=check_inputs)
    seeds = samplers.split_seed(stateless_seed(seed), 4)
    x = self._dequantize(x, training if dequantize is None else dequantize, seeds[0])
    embedding = self.embed(x)                                        # [B, T, 2C]
    y_seeds = samplers.split_seed(seeds[1], 3)
    mean_y, scale_y = self.q_y_params(embedding, training, y_seeds[0])  # [B, T, Y]
    # Write and read addresses [B, T, K] (eq. 5, 8): the read's from a fresh y ~ q(y|x).
    w_write, w = self._write_and_read_weights(mean_y, scale_y, y_seeds[1], y_seeds[2])
    prior = self.prior()                                               # built once per call
    q_z_x = _split_normal(embedding)                                   # q(z|x) [B, T, C]
    memory = self._write(embedding, w_write, seeds[2], prior, q_z_x)  # batch [B]
    prior_mean, prior_scale = self._memory_prior_on_z(memory, w)      # [B, T, C]
    mean_z, scale_z = self.q_z_params(embedding, prior_mean, prior_scale, q_z_x[0])
    z = _sample_normal(mean_z, scale_z, seeds[3])                      # [B, T, C]
    reconstruction = -self.log_likelihood(x, self.decode(z))          # [B, T]
    kl_y = diag_normal_kl(mean_y, scale_y, tf.zeros_like(mean_y), tf.ones_like(scale_y))
    kl_z = diag_normal_kl(mean_z, scale_z, prior_mean,
                          tf.broadcast_to(prior_scale, tf.shape(prior_mean)))  # [B, T]
    weighted_kl_y = kl_y if kl_y_weight is None else kl_y_weight * kl_y
    per_example = tf.reduce_mean(reconstruction + weighted_kl_y + kl_z, axis=-1)  # [B]
    out = {
        "loss": tf.reduce_mean(per_example),
        "per_example_loss": per_example,
        "reconstruction": tf.reduce_mean(reconstruction),
        "kl_y": tf.reduce_mean(kl_y),
        "kl_z": tf.reduce_mean(kl_z),
    }
    if diagnostics:
      episode_length = tf.cast(tf.shape(x)[1], tf.float32)
      kl_memory = tfd.kl_divergence(memory, prior) / episode_length   # [B]
      out["kl_memory"] = tf.reduce_mean(kl_memory)
    return out

  # -- the user API: write, read, generate, interpolate
  def write(self, episode, seed=None):
    """Writes episodes `[B, T, H, W, D]` into the prior memory (Algorithm 2).

    Returns:
      The posterior `KanervaMemory` q(M|X), batch shape [B], event [K, C].
    """
    x = self.check_images(episode)
    seeds = samplers.split_seed(stateless_seed(seed), 3)
    embedding = self.embed(x)
    mean_y, scale_y = self.q_y_params(embedding, False, seeds[0])
    return self._write(embedding, self.write_weights(mean_y, scale_y, seeds[1]), seeds[2])

  def read(self, queries, memory, iterations=1, seed=None):
    """Iterative reading (Algorithm 1, section 3.5) of queries `[B, N, H, W, D]`.

    Each iteration: y ~ q(y|x), w = f(y)^T A, mu_z = w^T R, z ~ q(z|x, y, M),
    x ~ p(x|z); the new x (a Bernoulli sample, or the Gaussian mean) is the next query.

    Args:
      queries: `[B, N, H, W, D]` float32 images in [0, 1] (e.g. noisy or incomplete).
      memory: a `KanervaMemory` with batch shape [B] (from `write`) or [] (e.g. `prior()`).
      iterations: number of reads n >= 1: a Python int (unrolled), or an int32 scalar
        `Tensor` (a `tf.while_loop`, e.g. in a SavedModel signature).
      seed: stateless seed.

    Returns:
      `[n, B, N, H, W, D]`: the mean image E[x|z] of every iteration.
    """
    x = self.check_images(queries, what="queries")
    seed = stateless_seed(seed)
    if isinstance(iterations, int):
      if iterations < 1:
        raise ValueError(f"read: iterations must be >= 1; got {iterations}.")
    elif not tf.is_tensor(iterations) or not iterations.dtype.is_integer:
      raise ValueError(f"read: iterations must be an int or an integer Tensor; got {iterations!r}.")
    else:
      with tf.control_dependencies([tf.debugging.assert_positive(
          iterations, message="read: iterations must be >= 1")]):
        iterations = tf.identity(iterations)

    def body(i, x, outputs):
      step_seed, sample_seed = tf.unstack(samplers.split_seed(samplers.fold_in(seed, i), 2))
      step = self._read_step(self.embed(x), memory, False, step_seed)
      params = self.decode(step["z"])
      return i + 1, self.sample_images(params, sample_seed), outputs.write(i, params["mean"])

    outputs = tf.TensorArray(tf.float32, size=iterations, element_shape=x.shape)
    _, _, outputs = iterate(body, iterations, (tf.constant(0), x, outputs))
    return outputs.stack()

  def generate(self, memory, num_samples, iterations=0, seed=None):
    """Samples conditioned on a memory (section 4.2), refined by iterative reading.

    y ~ N(0, I), w = f(y)^T A, z ~ p(z | y, M) (eq. 6 with R; eq. 19 with
    distribution_memory), x ~ p(x | z); then `iterations` rounds of `read`.

    Returns:
      `[iterations + 1, B, num_samples, H, W, D]` image means (index 0: before reading).
    """
    if isinstance(iterations, int) and iterations < 0:
      raise ValueError(f"generate: iterations must be >= 0; got {iterations!r}.")
    seeds = samplers.split_seed(stateless_seed(seed), 4)
    batch = tf.shape(memory.loc)[:-2]
    y = tf.random.stateless_normal(
        tf.concat([batch, [num_samples, self.config.y_size]], 0), seeds[0])
    w = self.addressing_weights(y)                                    # [B, N, K]
    mean, scale = self._memory_prior_on_z(memory, w)
    z = _sample_normal(mean, tf.broadcast_to(scale, tf.shape(mean)), seeds[1])
    return self._then_read(self.decode(z), memory, iterations, seeds[2:])

  def reconstruct(self, episode, seed=None):
    """Writes episodes `[B, T, H, W, D]` and reads them back once: means `[B, T, H, W, D]`."""
    seeds = samplers.split_seed(stateless_seed(seed), 2)
    memory = self.write(episode, seeds[0])
    return self.read(episode, memory, 1, seeds[1])[0]

  def interpolate(self, images_a, images_b, memory, num_steps=8):
    """Images read from linear interpolations in w-space (section 4.3, Fig. 7).

    w_a, w_b come from the means of q(y|x) of `images_a`, `images_b` `[B, H, W, D]`;
    w(alpha) = (1 - alpha) w_a + alpha w_b is read with z = w^T R and decoded.

    Returns:
      `[B, num_steps, H, W, D]` image means (alpha from 0 to 1).
    """
    pair = tf.stack([self.check_images(images_a, 4, "images_a"),
                     self.check_images(images_b, 4, "images_b")], axis=1)  # [B, 2, H, W, D]
    mean_y, _ = self.q_y_params(self.embed(pair), False, None)
    w = self.addressing_weights(mean_y)                                     # [B, 2, K]
    alpha = tf.linspace(0., 1., num_steps)[:, tf.newaxis]                   # [steps, 1]
    w = (1. - alpha) * w[:, :1] + alpha * w[:, 1:]                          # [B, steps, K]
    return self.decode(memory.read(w))["mean"]
