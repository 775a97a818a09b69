"""Tests of kanerva_tf.evaluation: bounds, importance-weighted NLL, address diagnostics, corruption.

Models are tiny and untrained; episodes are random binary images. Each numeric result is
checked against an independent reference (the analytic bound for k = 1, a numpy Gaussian
conditioning for the address diagnostics). The sweep (`bound_sweep`) runs on mocked TFDS data
in test_evaluate_run.py, through `run_evaluation`.

Shapes: B batch of episodes, T episode length, H W D image height/width/depth; k importance
samples.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kanerva_tf as kt
from kanerva_tf import evaluation
from kanerva_tf import runs

TINY = dict(code_size=6, memory_size=5, address_size=4, num_filters=4, y_size=3,
            mlp_hidden_size=8, episode_length=4)
OMNIGLOT_TINY = kt.ModelConfig(image_shape=(28, 28, 1), **TINY)


# ----------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("model_type", ["vae", pytest.param("kanerva", marks=pytest.mark.slow)])
def test_importance_weighted_estimate(model_type, binary_episodes):
  """k = 1 matches the analytic bound in expectation; more samples give a lower NLL."""
  config = kt.ModelConfig(image_shape=(8, 8, 1), **TINY)
  model = runs.build_model(model_type, config)
  ds = binary_episodes(8, 16, 4, config.image_shape, seed=1)
  one = evaluation.evaluate_bound(model, ds, seed=3, importance_samples=1)
  many = evaluation.evaluate_bound(model, ds, seed=3, importance_samples=16)
  assert one["num_episodes"] == many["num_episodes"] == 8 * 16
  assert one["loss"] == many["loss"]  # same seed: the analytic part is the same
  # k = 1: two Monte Carlo estimates of the same expectation (analytic KLs vs log-ratios); the
  # episode-level standard errors make a conservative tolerance. For the Kanerva Machine both
  # read with y independent of the write (eq. 12).
  tol = 4 * np.hypot(one["loss_stderr"], one["iw_loss_stderr"])
  assert abs(one["iw_loss"] - one["loss"]) < tol, (one, tol)
  # k = 16: the log-likelihood estimate is higher (the NLL lower), by far more than the noise
  # (about 0.5 nats here, against standard errors of a few hundredths).
  assert many["iw_loss"] < one["iw_loss"] - 4 * np.hypot(one["iw_loss_stderr"],
                                                         many["iw_loss_stderr"])
  if model_type == "vae":  # IWAE >= ELBO holds for the VAE's own bound
    assert many["iw_loss"] < many["loss"] - tol
  terms = ("reconstruction", "kl_y", "kl_z") if model_type == "kanerva" else (
      "reconstruction", "kl_z")
  np.testing.assert_allclose(one["loss"], sum(one[k] for k in terms), rtol=1e-5)
  assert "bits_per_dim" not in one


def test_importance_sampling_chunks_and_determinism(binary_episodes):
  # Chunks: the largest divisor of k that decodes at most 4096 images at a time.
  assert evaluation._chunk_size(16, 64) == 16
  assert evaluation._chunk_size(100, 512) == 5      # 4096 // 512 = 8 -> largest divisor 5
  assert evaluation._chunk_size(7, 10_000) == 1
  config = kt.ModelConfig(image_shape=(8, 8, 1), **TINY)
  model = runs.build_model("kanerva", config)
  x = next(iter(binary_episodes(1, 2, 4, config.image_shape, seed=2)))
  a = evaluation.importance_log_likelihood(model, x, 6, seed=1)
  b = evaluation.importance_log_likelihood(model, x, 6, seed=1)
  c = evaluation.importance_log_likelihood(model, x, 6, seed=2)
  assert a.shape == (2, 4) and np.all(np.isfinite(a))
  np.testing.assert_array_equal(a, b)  # int seeds are deterministic (not sanitize_seed(int))
  assert not np.array_equal(a, c)


def test_gaussian_reports_bits_per_dim():
  config = kt.ModelConfig(image_shape=(8, 8, 3), likelihood="gaussian", **TINY)
  model = runs.build_model("vae", config)
  x = tf.random.stateless_uniform((2, 4, 4) + config.image_shape, (5, 0))
  out = evaluation.evaluate_bound(model, tf.data.Dataset.from_tensor_slices(x), seed=0,
                                  importance_samples=2)
  np.testing.assert_allclose(out["bits_per_dim"], model.bits_per_dim(out["loss"]), rtol=1e-6)
  np.testing.assert_allclose(out["iw_bits_per_dim"], model.bits_per_dim(out["iw_loss"]),
                             rtol=1e-6)


def test_bits_per_dim_against_a_hand_computation():
  """bits/dim = (nats + HWD log 256) / (HWD log 2): 0 nats per 32x32x3 image is 8 bits/dim
  (the U(0, 1/256) dequantisation's uniform density); HWD log 2 nats more is one bit more."""
  model = runs.build_model("vae", kt.ModelConfig(
      image_shape=(32, 32, 3), likelihood="gaussian", **TINY))
  dims = 32 * 32 * 3
  np.testing.assert_allclose(model.bits_per_dim(0.), 8.0, rtol=1e-12)
  np.testing.assert_allclose(model.bits_per_dim(dims * np.log(2.)), 9.0, rtol=1e-12)
  np.testing.assert_allclose(model.bits_per_dim(-1000.), 8.0 - 1000. / (3072 * 0.6931471805599453),
                             rtol=1e-12)


@pytest.mark.parametrize("model_type", ["vae", "kanerva"])
def test_likelihood_scale_range_is_the_decoders_scale_at_the_written_code(model_type):
  # Seeded: an unseeded tiny decoder can start with every ReLU dead, a constant scale.
  keras.utils.set_random_seed(1)
  config = kt.ModelConfig(image_shape=(8, 8, 3), likelihood="gaussian", **TINY)
  model = runs.build_model(model_type, config)
  x = tf.random.stateless_uniform((2, 3) + config.image_shape, (4, 0))
  got = evaluation.likelihood_scale_range(model, x)
  # Independent: the decoder's raw second half of channels, softplus in numpy, + 1e-3.
  code = model.embed(x).numpy()[..., :config.code_size]
  raw = np.split(model.decoder(tf.constant(code)).numpy().astype(np.float64), 2, axis=-1)[1]
  scale = np.log1p(np.exp(raw)) + 1e-3
  assert set(got) == {"pixel_scale_min", "pixel_scale_median", "pixel_scale_max"}
  np.testing.assert_allclose([got["pixel_scale_min"], got["pixel_scale_median"],
                              got["pixel_scale_max"]],
                             [scale.min(), np.median(scale), scale.max()], rtol=1e-5)
  assert got["pixel_scale_min"] < got["pixel_scale_max"]
  bernoulli = runs.build_model(model_type, kt.ModelConfig(image_shape=(8, 8, 1), **TINY))
  assert evaluation.likelihood_scale_range(
      bernoulli, tf.zeros((1, 2, 8, 8, 1))) == {}


def test_evaluate_bound_rejects_infinite_and_bad_arguments():
  model = runs.build_model("vae", kt.ModelConfig(image_shape=(8, 8, 1), **TINY))
  x = tf.zeros((1, 2, 8, 8, 1))
  with pytest.raises(ValueError, match="infinite"):
    evaluation.evaluate_bound(model, tf.data.Dataset.from_tensors(x).repeat())
  with pytest.raises(ValueError, match="importance_samples must be an int >= 0"):
    evaluation.evaluate_bound(model, [x], importance_samples=-1)
  with pytest.raises(ValueError, match="no batches"):
    evaluation.evaluate_bound(model, [])


# ----------------------------------------------------------------------------- corruption
def test_corrupt_with_block():
  x = tf.ones((5, 28, 28, 1))
  noisy, corners, (bh, bw) = evaluation.corrupt_with_block(x, seed=(0, 1))
  assert (bh, bw) == (12, 12) and corners.shape == (5, 2)
  zeros, corners_z, _ = evaluation.corrupt_with_block(x, seed=(0, 1), fill="zeros")
  np.testing.assert_array_equal(corners, corners_z)  # same seed, same places
  for i, (r, c) in enumerate(corners):
    block = np.zeros((28, 28, 1), bool)
    block[r:r + 12, c:c + 12] = True
    np.testing.assert_array_equal(zeros[i].numpy()[block], 0.)
    np.testing.assert_array_equal(zeros[i].numpy()[~block], 1.)
    np.testing.assert_array_equal(noisy[i].numpy()[~block], 1.)
    assert set(np.unique(noisy[i].numpy()[block])) == {0., 1.}
  assert evaluation.corrupt_with_block(tf.ones((1, 32, 32, 3)), (0, 0))[2] == (14, 14)
  with pytest.raises(ValueError, match="fill"):
    evaluation.corrupt_with_block(x, (0, 0), fill="blur")


# ----------------------------------------------------------------------------- address_diagnostics
def _numpy_retrieval_r2(model, x, seed):
  """retrieval_r2 recomputed independently: numpy Gaussian conditioning (eq. 9-11) per episode;
  also code_norm and code_spread."""
  from tensorflow_probability.python.internal import samplers  # pylint: disable=g-import-not-at-top
  seeds = samplers.split_seed(kt.model.stateless_seed(seed), 2)
  e = model.encoder(x)
  mean_y, scale_y = model.q_y_params(e, False, seeds[0])
  ys = mean_y + scale_y * tf.random.stateless_normal(tf.concat([[2], tf.shape(mean_y)], 0),
                                                     seeds[1])
  w, w_read = (np.float64(v) for v in tf.unstack(model.addressing_weights(ys)))
  if model.config.write_address == "mean":
    w = np.float64(model.addressing_weights(mean_y))
  z = np.float64(tf.split(e, 2, axis=-1)[0])
  prior = model.prior()
  r0, u0 = np.float64(prior.mean()), np.float64(prior.row_covariance)
  num, den = 0., 0.
  for b in range(x.shape[0]):
    sigma_z = w[b] @ u0 @ w[b].T + model.config.noise_variance * np.eye(w.shape[1])
    r = r0 + u0 @ w[b].T @ np.linalg.solve(sigma_z, z[b] - w[b] @ r0)
    num += np.sum((w_read[b] @ r - z[b]) ** 2)
    den += np.sum((z[b] - z[b].mean(0)) ** 2)
  return 1. - num / den, np.sqrt(np.mean(np.sum(z ** 2, -1))), np.sqrt(np.mean(np.sum(
      (z - z.mean(1, keepdims=True)) ** 2, -1)))


def test_address_diagnostics_match_numpy_and_detect_image_independent_addresses():
  keras.utils.set_random_seed(0)
  model = kt.KanervaMachine(OMNIGLOT_TINY)
  rng = np.random.default_rng(0)
  x = tf.constant((rng.random((2, 4, 28, 28, 1)) < 0.3).astype(np.float32))
  model(x)
  d = evaluation.address_diagnostics(model, x, seed=3)
  assert set(d) == {"embedding_std", "q_y_scale", "q_y_mean_std", "w_norm", "w_cos_same",
                    "w_cos_other", "retrieval_r2", "code_norm", "code_spread"}
  r2, code_norm, code_spread = _numpy_retrieval_r2(model, x, 3)
  assert d["retrieval_r2"] == pytest.approx(r2, abs=1e-3)
  assert d["code_norm"] == pytest.approx(code_norm, rel=1e-4)
  assert d["code_spread"] == pytest.approx(code_spread, rel=1e-4)
  assert 0 < d["code_spread"] < d["code_norm"]
  assert d["embedding_std"] > 0 and d["q_y_scale"] > 0 and d["w_norm"] > 0
  assert -1 <= d["w_cos_other"] <= 1 and -1 <= d["w_cos_same"] <= 1
  # Force q(y|x) to N(1, 0.01^2) for every image: the addresses stop depending on the image,
  # so two samples of one image and two different images give the same address direction.
  kernel, bias = model.q_y.output_layer.kernel, model.q_y.output_layer.bias
  kernel.assign(tf.zeros_like(kernel))
  y_size = model.config.y_size
  # The MLP outputs (mean, raw scale) per input (the default y_scale=None): mean 1, scale
  # softplus(-5) + 1e-4 ~ 0.007.
  assert model.config.y_scale is None
  bias.assign(tf.concat([tf.ones([y_size]), tf.fill([y_size], -5.)], 0))
  collapsed = evaluation.address_diagnostics(model, x, seed=3)
  assert collapsed["q_y_mean_std"] == pytest.approx(0., abs=1e-6)
  assert collapsed["w_cos_same"] > 0.99 and collapsed["w_cos_other"] > 0.99


def test_address_diagnostics_write_as_the_model_writes():
  """With write_address='mean' the diagnostic's memory is written with the mean address (as
  the model writes) and read with a sample; the numpy reference agrees."""
  keras.utils.set_random_seed(0)
  cfg = kt.ModelConfig(**{**OMNIGLOT_TINY.to_dict(), "write_address": "mean", "y_scale": 0.3})
  model = kt.KanervaMachine(cfg)
  x = tf.constant((np.random.default_rng(1).random((2, 4, 28, 28, 1)) < 0.3).astype(np.float32))
  model(x)
  d = evaluation.address_diagnostics(model, x, seed=3)
  r2, _, _ = _numpy_retrieval_r2(model, x, 3)
  assert d["retrieval_r2"] == pytest.approx(r2, abs=1e-3)
  assert d["q_y_scale"] == pytest.approx(0.3, rel=1e-5)


def test_address_diagnostics_refuses_the_vae():
  with pytest.raises(ValueError, match="Kanerva"):
    vae = kt.VAE(OMNIGLOT_TINY)
    evaluation.address_diagnostics(vae, tf.zeros((1, 4, 28, 28, 1)))
