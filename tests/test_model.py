"""Tests of kanerva_tf.model: KanervaMachine and VAE."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import kanerva_tf as kt
from kanerva_tf import model as model_lib

tfd = tfp.distributions

TINY = kt.ModelConfig(image_shape=(8, 8, 1), code_size=6, memory_size=5, address_size=4,
                      num_filters=4, y_size=3, mlp_hidden_size=8, episode_length=4)


def _binary(shape, seed=0):
  return tf.cast(tf.random.stateless_uniform(shape, (seed, 0)) < 0.3, tf.float32)


def _scalars(out):
  return {k: float(v) for k, v in out.items() if v.shape.rank == 0}


# ----------------------------------------------------------------------------- math helpers
def test_diag_normal_kl_matches_tfp():
  rng = np.random.default_rng(0)
  mq, mp = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
  sq, sp = rng.uniform(0.1, 2, size=(2, 3, 5)), rng.uniform(0.1, 2, size=(1, 3, 5))
  want = tfd.kl_divergence(tfd.MultivariateNormalDiag(mq, sq), tfd.MultivariateNormalDiag(mp, sp))
  np.testing.assert_allclose(model_lib.diag_normal_kl(mq, sq, mp, sp), want, rtol=1e-10)


def test_likelihoods_match_tfp():
  rng = np.random.default_rng(1)
  x = (rng.random((2, 4, 4, 3)) < 0.5).astype(np.float64)
  logits = rng.normal(size=(2, 4, 4, 3))
  np.testing.assert_allclose(
      model_lib.bernoulli_log_prob(x, logits),
      np.sum(x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits), axis=(1, 2, 3)),
      rtol=1e-10)
  xg = rng.random((2, 4, 4, 3))
  loc, scale = rng.normal(size=xg.shape), rng.uniform(0.1, 1, size=xg.shape)
  np.testing.assert_allclose(
      model_lib.gaussian_log_prob(xg, loc, scale),
      tfd.Independent(tfd.Normal(loc, scale), 3).log_prob(xg), rtol=1e-10)


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", ["omniglot", "cifar"])
@pytest.mark.parametrize("cls", [kt.KanervaMachine, kt.VAE])
def test_presets_shapes_finite_and_loss_is_sum_of_terms(preset, cls):
  cfg = getattr(kt.ModelConfig, preset)()
  model = cls(cfg)
  x = tf.random.stateless_uniform((2, 3) + cfg.image_shape, (1, 2))
  if cfg.likelihood == "bernoulli":
    x = tf.round(x)
  out = model(x, training=True, seed=(3, 4))
  assert out["per_example_loss"].shape == (2,)
  for key, value in out.items():
    assert np.all(np.isfinite(value)), key
  terms = ["reconstruction", "kl_z"] + (["kl_y"] if cls is kt.KanervaMachine else [])
  assert set(terms) <= set(out)
  np.testing.assert_allclose(out["loss"], sum(out[k] for k in terms), rtol=1e-5)
  np.testing.assert_allclose(out["loss"], np.mean(out["per_example_loss"]), rtol=1e-6)
  if cls is kt.KanervaMachine:
    assert out["kl_memory"] > 0
    memory = model.write(x, seed=(1, 1))
    assert memory.batch_shape == [2] and memory.event_shape == [cfg.memory_size, cfg.code_size]
    reads = model.read(x, memory, iterations=2, seed=(2, 2))
    assert reads.shape == (2, 2, 3) + cfg.image_shape
    samples = model.generate(memory, 4, iterations=1, seed=(3, 3))
    assert samples.shape == (2, 2, 4) + cfg.image_shape
    assert np.all(np.isfinite(samples)) and np.all(samples >= 0) and np.all(samples <= 1)
  else:
    assert model.generate(4, iterations=1, seed=(3, 3)).shape == (2, 4) + cfg.image_shape
  assert model.reconstruct(x, seed=(4, 4)).shape == x.shape


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cls", [kt.KanervaMachine, kt.VAE])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gradients_reach_every_trainable_variable(cls, likelihood):
  # Seeded: with an unlucky random init a tiny layer's ReLUs can all be dead on these 8
  # images, and its bias gradient exactly zero (seen once unseeded).
  keras.utils.set_random_seed(1)
  cfg = kt.ModelConfig(**{**TINY.to_dict(), "likelihood": likelihood})
  model = cls(cfg)
  x = tf.random.stateless_uniform((2, 4, 8, 8, 1), (5, 6))
  with tf.GradientTape() as tape:
    loss = model(x, training=True, seed=(1, 2))["loss"]
  variables = model.trainable_variables
  grads = tape.gradient(loss, variables)
  names = [v.path for v in variables]
  for name, grad in zip(names, grads):
    assert grad is not None, name
    assert np.any(np.asarray(grad) != 0), name
  joined = " ".join(names)
  for part in ["encoder", "decoder"] + (
      ["q_y", "key", "q_z_read", "addresses", "prior_loc", "prior_scale_raw"]
      if cls is kt.KanervaMachine else []):
    assert part in joined, part


def test_prior_row_covariance_stays_positive_definite():
  model = kt.KanervaMachine(TINY)
  raw = np.random.default_rng(2).normal(size=(5, 5)).astype(np.float32) * 3
  model.prior_scale_raw.assign(raw)
  u = model.prior().row_covariance.numpy()
  np.testing.assert_allclose(u, u.T, rtol=1e-6)
  assert np.linalg.eigvalsh(u).min() > 0


# ----------------------------------------------------------------------------- options
def test_same_seed_same_loss_and_write_methods_agree():
  x = _binary((2, 4, 8, 8, 1))
  batch = kt.KanervaMachine(TINY)
  batch(x)
  online = kt.KanervaMachine(kt.ModelConfig(**{**TINY.to_dict(), "write_method": "online",
                                               "chunk_size": 3}))
  online(x)
  online.set_weights(batch.get_weights())
  a = batch(x, training=True, seed=(7, 7))
  b = batch(x, training=True, seed=(7, 7))
  c = online(x, training=True, seed=(7, 7))
  assert _scalars(a) == _scalars(b)
  # A Python int is a fixed seed too (not a stateful one).
  assert _scalars(batch(x, training=True, seed=3)) == _scalars(batch(x, training=True, seed=3))
  for key in ("loss", "kl_z", "kl_memory"):
    np.testing.assert_allclose(c[key], a[key], rtol=1e-4)
  assert _scalars(batch(x, training=True, seed=(8, 8)))["loss"] != _scalars(a)["loss"]


def _twins(x, base_overrides=None, **overrides):
  """A TINY Kanerva Machine (with `base_overrides`) and one with `overrides` on top, both
  built on x, with the same weights."""
  base_config = kt.ModelConfig(**{**TINY.to_dict(), **(base_overrides or {})})
  base = kt.KanervaMachine(base_config)
  base(x)
  other = kt.KanervaMachine(kt.ModelConfig(**{**base_config.to_dict(), **overrides}))
  other(x)
  other.set_weights(base.get_weights())
  return base, other


def test_distribution_memory_option():
  x = _binary((2, 4, 8, 8, 1))
  mean_field, dist = _twins(x, distribution_memory=True)
  a, b = mean_field(x, seed=(1, 1)), dist(x, seed=(1, 1))
  assert np.isfinite(b["loss"]) and abs(float(a["kl_z"]) - float(b["kl_z"])) > 1e-6
  np.testing.assert_allclose(b["loss"], b["reconstruction"] + b["kl_y"] + b["kl_z"], rtol=1e-5)


def test_read_posterior_encoder_skip():
  """q(z|x,y,M)'s mean with "encoder_skip" is "concat"'s MLP mean output plus the mean of
  q(z|x), the first C entries of the embedding, i.e. the written code; the same MLP, the
  same scale; the loss is still the sum of eq. 12's terms, with the same addresses."""
  x = _binary((2, 4, 8, 8, 1))
  concat, other = _twins(x, {"read_posterior": "concat"}, read_posterior="encoder_skip")
  embedding = concat.encoder(x)
  prior_mean = tf.random.stateless_normal([2, 4, TINY.code_size], (3, 3))
  mean_c, scale_c = concat.q_z_params(embedding, prior_mean)
  mean_o, scale_o = other.q_z_params(embedding, prior_mean)
  np.testing.assert_allclose(mean_o, embedding[..., :TINY.code_size] + mean_c, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(scale_o, scale_c)
  # A memory prior far from R_0 = 0, so that the read w^T R, the MLP's other input, is large.
  for m in (concat, other):
    m.prior_loc.assign(tf.random.stateless_normal(m.prior_loc.shape, (4, 4)))
  a, b = concat(x, seed=(1, 1)), other(x, seed=(1, 1))
  assert abs(float(a["kl_z"]) - float(b["kl_z"])) > 1e-3
  np.testing.assert_allclose(b["loss"], b["reconstruction"] + b["kl_y"] + b["kl_z"], rtol=1e-5)
  np.testing.assert_allclose(a["kl_y"], b["kl_y"], rtol=1e-6)  # same addresses


def test_read_posterior_prior_has_no_bottom_up_stream():
  """read_posterior="prior" (Appendix D): z_t ~ p(z_t|y_t,M), so KL(z) = 0, the loss is the
  reconstruction + KL(y) of those codes, there is no q_z network, and every remaining
  variable still gets a gradient; the image reaches the decoder only through the memory:
  with the same addresses and memory, the code read does not depend on the image read."""
  x = _binary((2, 4, 8, 8, 1))
  model = kt.KanervaMachine(kt.ModelConfig(**{**TINY.to_dict(), "read_posterior": "prior"}))
  with tf.GradientTape() as tape:
    out = model(x, training=True, seed=(1, 1))
  assert model.q_z is None
  assert not any("q_z_read" in v.path for v in model.variables)
  np.testing.assert_allclose(out["kl_z"], 0., atol=1e-6)
  np.testing.assert_allclose(out["loss"], out["reconstruction"] + out["kl_y"], rtol=1e-5)
  grads = tape.gradient(out["loss"], model.trainable_variables)
  missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
  assert not missing, missing
  embedding = model.encoder(x)
  prior_mean = tf.random.stateless_normal([2, 4, TINY.code_size], (3, 3))
  mean_a, scale_a = model.q_z_params(embedding, prior_mean, 0.5)
  mean_b, _ = model.q_z_params(embedding[::-1], prior_mean, 0.5)
  np.testing.assert_array_equal(mean_a, prior_mean)
  np.testing.assert_array_equal(mean_b, prior_mean)
  np.testing.assert_allclose(scale_a, np.full(prior_mean.shape, 0.5))
  with pytest.raises(ValueError, match="needs prior_scale"):
    model.q_z_params(embedding, prior_mean)


def test_diagonal_row_covariance_option():
  """row_covariance="diagonal" (Fig. 10): U_0 is diagonal, and the written memory keeps the
  exact posterior mean and the diagonal of the exact posterior U (eq. 11) from that prior;
  every variable still gets a gradient."""
  x = _binary((2, 4, 8, 8, 1))
  model = kt.KanervaMachine(kt.ModelConfig(**{**TINY.to_dict(), "row_covariance": "diagonal"}))
  with tf.GradientTape() as tape:
    out = model(x, training=True, seed=(1, 1))
  grads = tape.gradient(out["loss"], model.trainable_variables)
  assert not [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
  assert model.prior_scale_raw.shape == (TINY.memory_size,)
  model.prior_scale_raw.assign(tf.linspace(-1., 1., TINY.memory_size))
  prior = model.prior()
  u0 = prior.row_covariance.numpy()
  np.testing.assert_array_equal(u0, np.diag(np.diag(u0)))
  np.testing.assert_allclose(np.diag(u0), (np.log1p(np.exp(np.linspace(-1, 1, 5))) + 1e-3) ** 2,
                             rtol=1e-5)
  embedding = model.encoder(x)
  w = tf.nn.softmax(tf.random.stateless_normal([2, 4, TINY.memory_size], (5, 5)))
  memory = model._write(embedding, w, (2, 2), prior)
  exact = prior.update(w, _sampled_z(model, embedding), noise_variance=TINY.noise_variance)
  np.testing.assert_allclose(memory.loc, exact.loc, rtol=1e-5, atol=1e-6)
  full_u = exact.row_covariance.numpy()
  assert np.abs(full_u * (1 - np.eye(5))).max() > 1e-4  # the exact posterior U is not diagonal
  np.testing.assert_allclose(memory.row_covariance,
                             np.stack([np.diag(np.diag(u)) for u in full_u]), rtol=1e-5,
                             atol=1e-7)
  with pytest.raises(ValueError, match="row_covariance must be one of"):
    kt.ModelConfig(row_covariance="low_rank")


def _sampled_z(model, embedding):
  """The z_t ~ q(z_t|x_t) that `model._write(embedding, w, (2, 2))` writes (eq. 8)."""
  from kanerva_tf.model import _sample_normal, _split_normal  # pylint: disable=g-import-not-at-top
  mean, scale = _split_normal(embedding)
  return _sample_normal(mean, scale, (2, 2))


def test_shared_y_scale_option():
  """y_scale=s: q(y|x)'s scale is one learned vector, s at initialisation, the same for every
  input; the MLP outputs only the mean; KL(y) is the closed form for that scale."""
  x = _binary((2, 4, 8, 8, 1))
  per_input = kt.KanervaMachine(kt.ModelConfig(**{**TINY.to_dict(), "y_scale": None}))
  shared = kt.KanervaMachine(kt.ModelConfig(**{**TINY.to_dict(), "y_scale": 0.3}))
  per_input(x), shared(x)
  assert shared.q_y.output_size == TINY.y_size and per_input.q_y.output_size == 2 * TINY.y_size
  embedding = shared.encoder(x)
  mean, scale = shared.q_y_params(embedding, False, None)
  np.testing.assert_allclose(scale, np.full([2, 4, TINY.y_size], 0.3), rtol=1e-6)
  np.testing.assert_allclose(mean, shared.q_y(embedding), rtol=1e-6)
  m = mean.numpy().astype(np.float64)
  want = 0.5 * np.sum(0.09 + m ** 2 - 1. - np.log(0.09), axis=-1).mean()
  np.testing.assert_allclose(float(shared(x, seed=(1, 1))["kl_y"]), want, rtol=1e-5)
  assert any(v is shared.q_y_scale_raw for v in shared.trainable_variables)


def test_write_address_mean_option():
  """write_address='mean' writes with w from the mean of q(y|x): the memory is the prior
  updated with those addresses and z ~ q(z|x), whatever the y seed; 'sample' depends on it."""
  x = _binary((2, 4, 8, 8, 1))
  sample, mean = _twins(x, {"write_address": "sample"}, write_address="mean")
  embedding = mean.encoder(x)
  mean_y, _ = mean.q_y_params(embedding, False, None)
  w = mean.addressing_weights(mean_y)
  memories = [mean.write(x, seed=(5, s)) for s in (1, 2)]
  seeds = model_lib.samplers.split_seed(model_lib.stateless_seed((5, 1)), 3)
  z_mean, z_scale = model_lib._split_normal(embedding)
  z = z_mean + z_scale * tf.random.stateless_normal(tf.shape(z_mean), seeds[2])
  want = mean.prior().update(w, z)
  np.testing.assert_allclose(memories[0].loc, want.loc, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(memories[0].row_covariance, want.row_covariance, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(memories[0].row_covariance, memories[1].row_covariance, rtol=1e-6)
  other = [sample.write(x, seed=(5, s)).row_covariance for s in (1, 2)]
  assert np.abs(other[0] - other[1]).max() > 1e-4


def test_prior_starts_at_zero_mean_and_identity_row_covariance():
  """R_0 starts at zeros and U_0 at (1 + 1e-3)^2 I (softplus(raw) = 1, plus the 1e-3 floor,
  on L's diagonal)."""
  cfg = kt.ModelConfig(**{**TINY.to_dict(), "memory_size": 32, "code_size": 64})
  prior = kt.KanervaMachine(cfg).prior()
  np.testing.assert_array_equal(prior.loc.numpy(), np.zeros((32, 64)))
  np.testing.assert_allclose(prior.row_covariance, 1.001**2 * np.eye(32), rtol=1e-5, atol=1e-6)


def test_gaussian_dequantisation_only_in_training():
  cfg = kt.ModelConfig(**{**TINY.to_dict(), "likelihood": "gaussian"})
  model = kt.VAE(cfg)
  x = tf.random.stateless_uniform((1, 4, 8, 8, 1), (1, 1))
  train = [float(model(x, training=True, seed=(2, 2))["loss"]) for _ in range(2)]
  evals = model(x, training=False, seed=(2, 2))
  forced = model(x, training=False, seed=(2, 2), dequantize=True)
  assert train[0] == train[1]
  assert float(forced["loss"]) == train[0] != float(evals["loss"])
  assert 0 < model.bits_per_dim(evals["loss"]) < 100


def test_get_config_round_trip():
  x = _binary((1, 4, 8, 8, 1))
  for cls in (kt.KanervaMachine, kt.VAE):
    model = cls(TINY)
    model(x)
    clone = cls.from_config(model.get_config())
    clone(x)
    clone.set_weights(model.get_weights())
    assert clone.config == model.config
    np.testing.assert_allclose(clone(x, seed=(1, 1))["loss"], model(x, seed=(1, 1))["loss"])


def test_interpolation_endpoints_are_the_reads_of_the_inputs():
  model = kt.KanervaMachine(TINY)
  x = _binary((2, 4, 8, 8, 1))
  memory = model.write(x, seed=(1, 1))
  images = model.interpolate(x[:, 0], x[:, 1], memory, num_steps=5)
  assert images.shape == (2, 5, 8, 8, 1)
  mean_y, _ = model.q_y_params(model.encoder(x[:, :1]), False, None)
  first = model.decode(memory.read(model.addressing_weights(mean_y)))["mean"]
  np.testing.assert_allclose(images[:, :1], first, atol=1e-5)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
  model = kt.KanervaMachine(TINY)
  with pytest.raises(TypeError, match=r"float32.*uint8.*tf.cast"):
    model(tf.zeros((1, 4, 8, 8, 1), tf.uint8))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, D\].*rank 4"):
    model(tf.zeros((4, 8, 8, 1)))
  with pytest.raises(ValueError, match=r"\(8, 8, 1\).*\(28, 28, 1\)"):
    model(tf.zeros((1, 4, 28, 28, 1)))
  with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
    model(tf.fill((1, 4, 8, 8, 1), np.nan))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 1\]"):
    model(tf.fill((1, 4, 8, 8, 1), 255.))
  with pytest.raises(ValueError, match="iterations"):
    model.read(tf.zeros((1, 2, 8, 8, 1)), model.prior(), iterations=0)
  with pytest.raises(TypeError, match="ModelConfig"):
    kt.KanervaMachine({"code_size": 3})


def test_value_checks_can_be_skipped_for_checked_input():
  """check_inputs=False (the training step, whose pipeline checked the batch) has no
  run-time assertions in its graph and lets a bad value through; the static checks stay."""
  model = kt.KanervaMachine(TINY)
  model(_binary((1, 4, 8, 8, 1)))
  bad = tf.fill((1, 4, 8, 8, 1), np.nan)
  assert not np.isfinite(float(model(bad, check_inputs=False)["loss"]))
  with pytest.raises(TypeError, match="float32"):
    model(tf.zeros((1, 4, 8, 8, 1), tf.uint8), check_inputs=False)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"KanervaMachine: episode values "
                     r"must be in \[0, 1\]; got a value > 1"):
    model(tf.fill((1, 4, 8, 8, 1), 1.5))

  def asserts(check):
    fn = tf.function(lambda x: model(x, check_inputs=check)["loss"])
    graph = fn.get_concrete_function(tf.TensorSpec((1, 4, 8, 8, 1))).graph
    # assert_all_finite is a CheckNumerics op; the range asserts are If ops around Assert.
    return sum(op.type in ("CheckNumerics", "Assert", "If", "StatelessIf")
               for op in graph.get_operations())
  assert asserts(True) >= 3 and asserts(False) == 0


@pytest.mark.parametrize("cls", [kt.KanervaMachine, kt.VAE])
def test_diagnostics_off_skips_kl_memory_with_the_same_loss(cls):
  x = _binary((2, 4, 8, 8, 1))
  model = cls(TINY)
  model(x)
  full = model(x, training=True, seed=(3, 4))
  cheap = model(x, training=True, seed=(3, 4), diagnostics=False)
  assert set(full) - set(cheap) == set(model.diagnostic_terms)
  for key, value in cheap.items():
    np.testing.assert_array_equal(value, full[key])
  if cls is kt.KanervaMachine:
    assert model.diagnostic_terms == ("kl_memory",) and float(full["kl_memory"]) > 0

    def ops(diagnostics):
      fn = tf.function(lambda x: model(x, training=True, seed=(3, 4),
                                        diagnostics=diagnostics)["loss"])
      graph = fn.get_concrete_function(tf.TensorSpec((2, 4, 8, 8, 1))).graph
      return [op.name for op in graph.get_operations()]
    assert any("KullbackLeibler" in n for n in ops(True))
    assert not any("KullbackLeibler" in n for n in ops(False))


# ----------------------------------------------------------------------------- precision
def _conv_dtypes(model, x):
  """The dtypes (attr T) of the convolution ops of a training step's graph."""
  def step(x):
    with tf.GradientTape() as tape:
      loss = model(x, training=True, seed=(1, 2))["loss"]
    return loss, tape.gradient(loss, model.trainable_variables)
  graph = tf.function(step).get_concrete_function(tf.TensorSpec(x.shape)).graph
  return {op.type: tf.as_dtype(op.get_attr("T")).name for op in graph.get_operations()
          if op.type.startswith("Conv2D")}


@pytest.mark.parametrize("cls", [kt.KanervaMachine, kt.VAE])
def test_bfloat16_networks_with_a_float32_memory_and_loss(cls):
  x = _binary((2, 4, 8, 8, 1))
  model = cls(TINY, precision="bfloat16")
  out = model(x, training=True, seed=(1, 2))
  assert {v.dtype.name for v in out.values()} == {"float32"}
  assert np.isfinite(float(out["loss"]))
  assert model.encoder.convs[0].compute_dtype == "bfloat16"
  assert model.decoder.deconvs[-1].compute_dtype == "bfloat16"
  assert {v.dtype for v in model.variables} == {"float32"}  # checkpoints as in float32
  assert model.embed(x).dtype == tf.float32 and model.decode(model.embed(x)[..., :6])[
      "mean"].dtype == tf.float32
  convs = _conv_dtypes(model, x)
  assert {"Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput"} <= set(convs)
  assert set(convs.values()) == {"bfloat16"}, convs
  assert set(_conv_dtypes(cls(TINY), x).values()) == {"float32"}  # the default is unchanged
  if cls is kt.KanervaMachine:
    assert model.q_y.compute_dtype == "float32" and model.key.compute_dtype == "float32"
    memory = model.write(x, seed=(1, 1))
    assert memory.loc.dtype == tf.float32 and memory.row_covariance.dtype == tf.float32
    assert model.read(x, memory, seed=(2, 2)).dtype == tf.float32
  clone = cls.from_config(model.get_config())
  assert clone.precision == "bfloat16"
  with pytest.raises(ValueError, match=r"precision must be one of \('float32', 'bfloat16'\); "
                     r"got 'float16'"):
    cls(TINY, precision="float16")
