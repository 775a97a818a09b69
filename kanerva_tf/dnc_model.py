"""The DNC baseline of section 4.4 and Appendix D: a DNC in place of the Kanerva memory.

`DNCMachine` keeps everything of the Kanerva Machine (`kanerva_tf.model`) around the memory:
the encoder e(x) (2C outputs: mean and scale of q(z|x)), the decoder and likelihood, and the
addressing variable y with the same q(y|x) MLP, input noise, prior N(0, I) and KL(y). The
memory M (K x C, Bayesian) is replaced by a `kanerva_tf.dnc.DNC` (N slots of W words, R read
heads, a 2-layer MLP controller with 200 hidden units), wrapped as Appendix D says:

  * Writing: the episode's T steps in order, controller input [y_t, z_t] with
    y_t ~ q(y_t|x_t) and z_t ~ q(z_t|x_t); the read-outs are discarded, only the final DNC
    state (memory, usage, link, precedence, read and write weights) is kept.
  * Reading x_t: controller input [y_t, 0] (the z_t slot zero: z_t is what is read), with a
    y_t ~ q(y_t|x_t) drawn independently of the write's; a read-only access to the written
    state, discarded after every step, so nothing new is stored (not even within the step:
    the read does not write first, which would let y_t pass to the read-out around the stored
    memory). The read-out alone, no controller output bypassing the memory, gives the prior
    p(z_t | y_t, M) = N(mu(r_t), sigma^2 I), mu a linear map of the R read vectors (the DNC's
    output layer), sigma^2 = `ModelConfig.noise_variance` (1, the Kanerva Machine's fixed
    variance).
  * No bottom-up stream (Appendix D's comparison): z_t is sampled from that prior, i.e. the
    posterior q(z_t | x_t, y_t, M) is p(z_t | y_t, M) itself, and decoded.

Sizes: the DNC's own sizes live in `DNCConfig` (not in `ModelConfig`); by default N = K =
`ModelConfig.memory_size` and W = C = `ModelConfig.code_size`, so the DNC's memory matrix has
the shape of the Kanerva Machine's (64 x 100 on Omniglot). `ModelConfig.address_size`,
`write_method` and `chunk_size` (the Kanerva memory's) and `read_posterior` (the
parameterisation of the Kanerva Machine's q(z|x,y,M), which the DNC baseline does not have)
are not used; `distribution_memory` must keep its default (False). `y_size`, `y_noise_std`,
`y_scale`, `write_address`, `noise_variance`, `mlp_hidden_size` (of q(y|x)) and
`kernel_initializer` act as in the Kanerva Machine.

Shapes follow the package glossary (`kanerva_tf/__init__.py`); Y is the size of y. The DNC
state is a `kanerva_tf.dnc.DNCState` with batch [B] (its own letters: N slots, W word size,
R read heads, there).
"""

import dataclasses
from typing import ClassVar, Dict, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from tensorflow_probability.python.internal import samplers

from kanerva_tf import dnc as dnc_lib
from kanerva_tf import networks
from kanerva_tf.config import ModelConfig
from kanerva_tf.model import KanervaMachine
from kanerva_tf.model import _GenerativeModel
from kanerva_tf.model import _MIN_SCALE
from kanerva_tf.model import _sample_normal
from kanerva_tf.model import _split_normal
from kanerva_tf.model import diag_normal_kl
from kanerva_tf.model import iterate
from kanerva_tf.model import stateless_seed

__all__ = ["DNCConfig", "DNCMachine"]

_LOG_2PI = float(np.log(2. * np.pi))


@dataclasses.dataclass(frozen=True)
class DNCConfig:
  """Sizes of the DNC of a `DNCMachine` (the rest is its `ModelConfig`).

  This section is the one description of every field: `train.py` takes the help and
  defaults of its `--dnc_<field>` flags from it and the dataclass defaults
  (`kanerva_tf.config.check_field_docs` keeps them in step). `to_dict()` is what a run's
  config.json records under "dnc".

  Attributes:
    num_reads: R, read heads (the paper does not give it; 4 as DeepMind's DNC code and
      Graves et al.'s bAbI model). There is one write head. Positive int. Default: `4`.
    word_size: W, the size of a memory word; None = `ModelConfig.code_size` C. None or a
      positive int. Default: `None`.
    memory_slots: N, the memory's slots (rows); None = `ModelConfig.memory_size` K. None or
      a positive int. Default: `None`.
    controller_hidden_size: hidden units of the controller MLP (Appendix D: 200). Positive
      int. Default: `200`.
  """
  CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {}  # no field takes one of a few strings

  num_reads: int = 4
  word_size: Optional[int] = None
  memory_slots: Optional[int] = None
  controller_hidden_size: int = 200

  def __post_init__(self):
    for name in ("num_reads", "word_size", "memory_slots", "controller_hidden_size"):
      value = getattr(self, name)
      if value is None and name in ("word_size", "memory_slots"):
        continue
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"DNCConfig.{name} must be a positive int"
                         f"{' or None' if name in ('word_size', 'memory_slots') else ''}; "
                         f"got {value!r}.")

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values):
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"DNCConfig: unknown fields {sorted(unknown)}.")
    return cls(**values)


def _normal_log_prob(x, mean, scale):
  """log N(x; mean, diag scale^2) summed over the last axis: `[...]`."""
  z = (x - mean) / scale
  return -tf.reduce_sum(0.5 * tf.square(z) + tf.math.log(scale) + 0.5 * _LOG_2PI, axis=-1)


@keras.saving.register_keras_serializable(package="kanerva_tf")
class DNCMachine(_GenerativeModel):
  """The Kanerva Machine's generative model with a DNC as its memory (Appendix D).

  Generative model, given the DNC state M written from an episode:
    y_t ~ N(0, I);  r_t = DNC read of M with controller input [y_t, 0]  (`R x W`);
    z_t ~ p(z_t | y_t, M) = N(mu(r_t), sigma^2 I);  x_t ~ p(x_t | z_t)  (decoder).
  Writing: M = DNC state after the steps [y_t, z_t], t = 1..T, with y_t ~ q(y_t|x_t) (or its
  mean, `write_address="mean"`) and z_t ~ q(z_t|x_t).
  Inference: q(y_t, z_t | x_t, M) = q(y_t|x_t) p(z_t | y_t, M) (no bottom-up stream).

  #### The loss

  Per image, with y_t ~ q(y_t|x_t) (a sample independent of the write's) and
  z_t = mu(r_t) + sigma eps, eps ~ N(0, I):

  ```none
  loss_t = -ln p(x_t | z_t) + KL(q(y_t|x_t) || N(0, I))  [+ KL(q(z_t|.) || p(z_t|y_t, M)) = 0]
  ```

  `loss` is the mean of loss_t over t and the batch. It is a one-sample estimate of minus the
  bound of eq. 12 / T under q(z_t | x_t, y_t, M) := p(z_t | y_t, M): with that q,
  E_q[ln p(x_t, y_t, z_t | M) - ln q(y_t, z_t | x_t, M)] = E[ln p(x_t|z_t)] - KL(y_t) - 0
  <= ln p(x_t | M), for the M written from the episode (itself a one-sample estimate over
  the write samples, as in the Kanerva Machine). The DNC memory is a deterministic function
  of the written samples with no prior, so there is no KL(q(M|X) || p(M)) and no
  `kl_memory`; `kl_z` is reported and is exactly 0.

  Args:
    config: a `ModelConfig` (see the module docstring for the fields used).
    dnc_config: a `DNCConfig` (default `DNCConfig()`).
  """

  # The Kanerva Machine's q(y|x) (MLP, input noise in training, per-input or shared scale):
  # the same code, on the same attributes `q_y` and `q_y_scale_raw` built below.
  q_y_params = KanervaMachine.q_y_params

  loss_terms = ("loss", "reconstruction", "kl_y", "kl_z")  # scalars of `call`

  def __init__(self, config=None, dnc_config=None, **kwargs):
    super().__init__(config, **kwargs)
    cfg = self.config
    if dnc_config is None:
      dnc_config = DNCConfig()
    if not isinstance(dnc_config, DNCConfig):
      raise TypeError(f"DNCMachine needs a kanerva_tf.dnc_model.DNCConfig; got {dnc_config!r}.")
    if cfg.distribution_memory:
      raise ValueError("DNCMachine: ModelConfig.distribution_memory=True is an option of the "
                       "Kanerva memory; the DNC baseline needs False.")
    self.dnc_config = dnc_config
    c = cfg.code_size
    init = cfg.kernel_initializer
    self.memory_slots = dnc_config.memory_slots or cfg.memory_size     # N
    self.word_size = dnc_config.word_size or c                          # W
    self.num_reads = dnc_config.num_reads                               # R
    # q(y|x) exactly as KanervaMachine.__init__ builds it.
    y_outputs = cfg.y_size if cfg.y_scale is not None else 2 * cfg.y_size
    self.q_y = networks.MLP(cfg.mlp_hidden_size, y_outputs, init, name="q_y")
    if cfg.y_scale is not None:
      raw = float(np.log(np.expm1(cfg.y_scale - _MIN_SCALE)))  # softplus(raw) + 1e-4 = y_scale
      self.q_y_scale_raw = self.add_weight(
          shape=(cfg.y_size,), initializer=keras.initializers.Constant(raw), name="q_y_scale_raw")
    self.dnc = dnc_lib.DNC(self.memory_slots, self.word_size, self.num_reads,
                           hidden_size=dnc_config.controller_hidden_size,
                           kernel_initializer=init, name="dnc")
    self.dnc.build((None, cfg.y_size + c))                  # controller input [y, z]
    # mu of p(z | y, M): the DNC's output layer on the read vectors alone.
    self.read_out = keras.layers.Dense(c, kernel_initializer=init, name="read_out")
    self.read_out.build((None, self.num_reads * self.word_size))

  # -- keras plumbing
  def get_config(self):
    return {**super().get_config(), "dnc": self.dnc_config.to_dict()}

  @classmethod
  def from_config(cls, config):
    return cls(ModelConfig.from_dict(config["config"]),
               DNCConfig.from_dict(config.get("dnc", {})), name=config.get("name"),
               precision=config.get("precision", "float32"))

  # -- the memory
  def initial_state(self, batch_size):
    """The empty DNC memory (all zeros), a `DNCState` with batch [batch_size]."""
    return self.dnc.initial_state(batch_size)

  def _write(self, embedding, mean_y, scale_y, seed):
    """Writes [y_t, z_t], t = 1..T in order (read-outs discarded); returns the `DNCState`.

    y_t ~ q(y_t|x_t) ("sample") or its mean ("mean", `write_address`); z_t ~ q(z_t|x_t)."""
    seeds = samplers.split_seed(seed, 2)
    if self.config.write_address == "mean":
      y = mean_y
    else:
      y = _sample_normal(mean_y, scale_y, seeds[0])
    mean_z, scale_z = _split_normal(embedding)                          # q(z|x) [B, T, C]
    z = _sample_normal(mean_z, scale_z, seeds[1])
    return self.dnc.write(tf.concat([y, z], axis=-1))

  def prior_mean(self, y, state):
    """mu of p(z | y, M) `[B, X, C]` for addresses y `[B, X, Y]`: the read-out of a
    read-only access to `state` with controller input [y, 0], through the output layer."""
    inputs = tf.concat([y, tf.zeros(tf.concat([tf.shape(y)[:-1], [self.config.code_size]], 0))],
                       axis=-1)
    reads = self.dnc.read(inputs, state)                                # [B, X, R, W]
    flat = tf.reshape(reads, tf.concat([tf.shape(reads)[:-2],
                                        [self.num_reads * self.word_size]], 0))
    return self.read_out(flat)

  @property
  def prior_scale(self):
    """sigma of p(z | y, M) = N(mu, sigma^2 I): sqrt(`ModelConfig.noise_variance`)."""
    return float(np.sqrt(self.config.noise_variance))

  def _read_code(self, y, state, seed):
    """z ~ p(z | y, M): (z, mu), each `[B, X, C]`."""
    mean = self.prior_mean(y, state)
    return _sample_normal(mean, tf.fill(tf.shape(mean), self.prior_scale), seed), mean

  # -- the loss
  def call(self, episode, training=False, seed=None, dequantize=None, kl_y_weight=None,
           diagnostics=True, check_inputs=True):
    """Minus the bound per image for episodes `[B, T, H, W, D]` (class docstring, "The loss").

    `kl_y_weight` (None = 1) weighs KL(y) in `loss` and `per_example_loss` as in
    `KanervaMachine.call`; the reported `kl_y` is unweighted. `diagnostics` is accepted as
    by `KanervaMachine.call` (no diagnostic terms here); `check_inputs=False` skips the
    run-time value checks of the images.

    Returns:
      dict of scalars (means over B and T, nats per image): `loss`, `reconstruction`
      (-ln p(x|z)), `kl_y`, `kl_z` (0), and `per_example_loss` `[B]` (mean over T).
    """
    x = self.check_images(episode, check_values=check_inputs)
    seeds = samplers.split_seed(stateless_seed(seed), 5)
    x = self._dequantize(x, training if dequantize is None else dequantize, seeds[0])
    embedding = self.embed(x)                                         # [B, T, 2C]
    mean_y, scale_y = self.q_y_params(embedding, training, seeds[1])   # [B, T, Y]
    state = self._write(embedding, mean_y, scale_y, seeds[2])
    y = _sample_normal(mean_y, scale_y, seeds[3])                      # read [B, T, Y]
    z, _ = self._read_code(y, state, seeds[4])                          # [B, T, C]
    reconstruction = -self.log_likelihood(x, self.decode(z))           # [B, T]
    kl_y = diag_normal_kl(mean_y, scale_y, tf.zeros_like(mean_y), tf.ones_like(scale_y))
    kl_z = tf.zeros_like(kl_y)  # q(z|x,y,M) = p(z|y,M)
    weighted_kl_y = kl_y if kl_y_weight is None else kl_y_weight * kl_y
    per_example = tf.reduce_mean(reconstruction + weighted_kl_y + kl_z, axis=-1)  # [B]
    return {
        "loss": tf.reduce_mean(per_example),
        "per_example_loss": per_example,
        "reconstruction": tf.reduce_mean(reconstruction),
        "kl_y": tf.reduce_mean(kl_y),
        "kl_z": tf.reduce_mean(kl_z),
    }

  # -- the user API, as the Kanerva Machine's: write, read, generate, reconstruct
  def write(self, episode, seed=None):
    """Writes episodes `[B, T, H, W, D]` into the empty DNC memory: the final `DNCState`."""
    x = self.check_images(episode)
    seeds = samplers.split_seed(stateless_seed(seed), 2)
    embedding = self.embed(x)
    mean_y, scale_y = self.q_y_params(embedding, False, None)
    return self._write(embedding, mean_y, scale_y, seeds[0])

  def read(self, queries, state, iterations=1, seed=None):
    """Iterative reading of queries `[B, N, H, W, D]` from a written `state` (batch [B]).

    Each iteration: y ~ q(y|x), z ~ p(z | y, M), x ~ p(x|z) (a Bernoulli sample, or the
    Gaussian mean) is the next query. `iterations`: a Python int >= 1 (unrolled) or an
    integer scalar `Tensor` (a `tf.while_loop`).

    Returns:
      `[iterations, B, N, H, W, D]`: the mean image E[x|z] of every iteration.
    """
    x = self.check_images(queries, what="queries")
    seed = stateless_seed(seed)
    if isinstance(iterations, int) and iterations < 1:
      raise ValueError(f"read: iterations must be >= 1; got {iterations}.")

    def body(i, x, outputs):
      y_seed, z_seed, x_seed = tf.unstack(samplers.split_seed(samplers.fold_in(seed, i), 3))
      mean_y, scale_y = self.q_y_params(self.embed(x), False, None)
      z, _ = self._read_code(_sample_normal(mean_y, scale_y, y_seed), state, z_seed)
      params = self.decode(z)
      return i + 1, self.sample_images(params, x_seed), outputs.write(i, params["mean"])

    outputs = tf.TensorArray(tf.float32, size=iterations, element_shape=x.shape)
    _, _, outputs = iterate(body, iterations, (tf.constant(0), x, outputs))
    return outputs.stack()

  def generate(self, state, num_samples, iterations=0, seed=None):
    """Samples given a written `state`: y ~ N(0, I), z ~ p(z | y, M), x ~ p(x|z), then
    `iterations` rounds of `read`: a Python int >= 0 or an integer scalar `Tensor` (the
    reads in a `tf.cond`, as `KanervaMachine.generate`).

    Returns:
      `[iterations + 1, B, num_samples, H, W, D]` image means (index 0: before reading).
    """
    if isinstance(iterations, bool) or (isinstance(iterations, int) and iterations < 0):
      raise ValueError(f"generate: iterations must be an int >= 0; got {iterations!r}.")
    seeds = samplers.split_seed(stateless_seed(seed), 4)
    batch = tf.shape(state.memory)[:1]
    y = tf.random.stateless_normal(tf.concat([batch, [num_samples, self.config.y_size]], 0),
                                   seeds[0])
    params = self.decode(self._read_code(y, state, seeds[1])[0])
    return self._then_read(params, state, iterations, seeds[2:])

  def reconstruct(self, episode, seed=None):
    """Writes episodes `[B, T, H, W, D]` and reads them back once: means `[B, T, H, W, D]`."""
    seeds = samplers.split_seed(stateless_seed(seed), 2)
    return self.read(episode, self.write(episode, seeds[0]), 1, seeds[1])[0]

  # -- evaluation
  def importance_log_weights(self, x, embedding, state, num_samples, seed):
    """Importance log-weights of k samples (y, z) ~ q(y|x) p(z|y, M): `[k, B, T]`.

    With q(z|x, y, M) = p(z|y, M) the z terms cancel:
    log w = ln p(x|z) + ln N(y; 0, I) - ln q(y|x). `x` `[B, T, H, W, D]` (as the model saw
    it, e.g. dequantised), `embedding` = e(x) `[B, T, 2C]`, `state` written from the episode.
    """
    k = num_samples
    seeds = samplers.split_seed(seed, 2)
    mean_y, scale_y = self.q_y_params(embedding, False, None)           # [B, T, Y]
    b, t = tf.shape(mean_y)[0], tf.shape(mean_y)[1]
    y = mean_y + scale_y * tf.random.stateless_normal(
        tf.concat([[k], tf.shape(mean_y)], 0), seeds[0])                 # [k, B, T, Y]
    y_b = tf.reshape(tf.transpose(y, [1, 0, 2, 3]), [b, k * t, -1])     # [B, k*T, Y]
    z_b, _ = self._read_code(y_b, state, seeds[1])                       # [B, k*T, C]
    z = tf.transpose(tf.reshape(z_b, [b, k, t, -1]), [1, 0, 2, 3])       # [k, B, T, C]
    x_k = tf.broadcast_to(x, tf.concat([[k], tf.shape(x)], 0))
    return (self.log_likelihood(x_k, self.decode(z))
            + _normal_log_prob(y, 0., 1.) - _normal_log_prob(y, mean_y, scale_y))
