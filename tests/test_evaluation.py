"""Tests of kanerva_tf.evaluation: bounds, importance-weighted NLL, address diagnostics, corruption.

Models are tiny and untrained; episodes are random binary images. Each numeric result is
checked against an independent reference (the analytic bound for k = 1, a numpy Gaussian
conditioning for the address diagnostics). The sweep (`bound_sweep`) runs on mocked TFDS data
in test_evaluate_run.py, through `run_evaluation`.

Shapes: B batch of episodes, T episode length, H W D image height/width/depth; k importance
samples.
"""

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
  import keras  # pylint: disable=g-import-not-at-top
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
  import keras  # pylint: disable=g-import-not-at-top
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


# ----------------------------------------------------------------------------- generation fidelity
def _numpy_fidelity(samples, conditioning, others):
  """Brute-force reference: loops over episodes and samples, float64."""
  fractions, d_c, d_o = [], [], []
  samples, conditioning, others = (np.float64(v) for v in (samples, conditioning, others))
  for s_e, a_e, o_e in zip(samples, conditioning, others):
    hits, dc, do = [], [], []
    for s in s_e:
      near_a = min(np.linalg.norm((s - a).ravel()) for a in a_e)
      near_o = min(np.linalg.norm((s - o).ravel()) for o in o_e)
      hits.append(1. if near_a < near_o else 0.5 if near_a == near_o else 0.)
      dc.append(near_a), do.append(near_o)
    fractions.append(np.mean(hits)), d_c.append(np.mean(dc)), d_o.append(np.mean(do))
  fractions, d_c, d_o = np.array(fractions), np.array(d_c), np.array(d_o)
  e = len(fractions)
  ratio = d_c.mean() / d_o.mean()
  return {"nn_in_conditioning": fractions.mean(),
          "nn_in_conditioning_stderr": fractions.std(ddof=1) / np.sqrt(e),
          "distance_ratio": ratio,
          "distance_ratio_stderr": np.sqrt(np.sum((d_c - ratio * d_o) ** 2) / (e * (e - 1)))
                                   / d_o.mean(),
          "distance_conditioning": d_c.mean(), "distance_other": d_o.mean()}


def test_nearest_neighbour_fidelity_matches_numpy_and_hand_made_cases():
  rng = np.random.default_rng(0)
  e, n, m, shape = 5, 6, 7, (6, 5, 1)
  a = (rng.random((e, m) + shape) < 0.3).astype(np.float32)          # conditioning
  o = (rng.random((e, m) + shape) < 0.3).astype(np.float32)          # others
  # Samples: noisy copies of conditioning images for some, of other images for the rest.
  source = np.where(rng.random((e, n, 1, 1, 1)) < 0.6, a[:, :n], o[:, :n])
  samples = np.clip(source + 0.3 * rng.standard_normal(source.shape), 0, 1).astype(np.float32)
  got = evaluation.nearest_neighbour_fidelity(samples, a, o)
  want = _numpy_fidelity(samples, a, o)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
  assert got["num_episodes"] == e and 0 < got["nn_in_conditioning"] < 1
  # Samples that are conditioning images: fraction 1, ratio 0; other images: 0, ratio inf.
  same = evaluation.nearest_neighbour_fidelity(a[:, :n], a, o)
  assert same["nn_in_conditioning"] == 1. and same["distance_ratio"] == 0.
  assert same["distance_conditioning"] == 0. and same["nn_in_conditioning_stderr"] == 0.
  other = evaluation.nearest_neighbour_fidelity(o[:, :n], a, o)
  assert other["nn_in_conditioning"] == 0. and other["distance_ratio"] == np.inf
  # Equally far from both sets (both sets the same images): ties count 1/2, ratio 1.
  tie = evaluation.nearest_neighbour_fidelity(samples, a, a)
  assert tie["nn_in_conditioning"] == 0.5 and tie["distance_ratio"] == pytest.approx(1.)
  # Distances are pixel L2: a blank sample vs one image with k ink pixels is at sqrt(k).
  blank = np.zeros((1, 1) + shape, np.float32)
  one = np.zeros((1, 1) + shape, np.float32)
  one[0, 0, :2, :2] = 1.                                              # 4 pixels: distance 2
  nine = np.zeros((1, 1) + shape, np.float32)
  nine[0, 0, :3, :3] = 1.                                             # 9 pixels: distance 3
  d = evaluation.nearest_neighbour_fidelity(blank, one, nine)
  assert (d["distance_conditioning"], d["distance_other"]) == (2., 3.)
  assert d["distance_ratio"] == pytest.approx(2. / 3.) and d["nn_in_conditioning"] == 1.


def test_nearest_neighbour_fidelity_rejects_bad_shapes():
  x = np.zeros((2, 3, 4, 4, 1), np.float32)
  with pytest.raises(ValueError, match=r"samples must be non-empty images \[E, N, H, W, D\]"):
    evaluation.nearest_neighbour_fidelity(x[0], x, x)
  with pytest.raises(ValueError, match="others must be non-empty"):
    evaluation.nearest_neighbour_fidelity(x, x, x[:, :0])
  with pytest.raises(ValueError, match="same number of episodes E and image shape"):
    evaluation.nearest_neighbour_fidelity(x, x[:1], x)
  with pytest.raises(ValueError, match="same number of episodes E and image shape"):
    evaluation.nearest_neighbour_fidelity(x, x, np.zeros((2, 3, 5, 4, 1)))


@pytest.fixture
def labelled_omniglot():
  """TFDS omniglot mocked with 60 distinct pages of 6 classes (label = i % 6 = the row of a
  black bar; a random square besides), so the classes of an episode are known."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = np.arange(60, dtype=np.int64) % 6
  pages = np.full((60, 105, 105, 3), 255, np.uint8)
  for i, label in enumerate(labels):
    pages[i, 12 * label + 10:12 * label + 18, 20:85] = 0
    r, c = rng.integers(0, 90, size=2)
    pages[i, r:r + 15, c:c + 15] = 0

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del self, split, decoders, read_config, kwargs
    return tf.data.Dataset.from_tensor_slices({"image": pages, "label": labels})
  data_lib.clear_cache()
  with tfds.testing.mock_data(num_examples=60, as_dataset_fn=as_dataset,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield
  data_lib.clear_cache()


_MOCK_DATA = {"dataset": "omniglot", "data_dir": None, "image_size": None, "binarize": None,
              "grayscale": None}


@pytest.mark.parametrize("model_type", ["kanerva", "vae"])
def test_generation_fidelity_runs_the_models(model_type, labelled_omniglot):
  del labelled_omniglot
  model = runs.build_model(model_type, OMNIGLOT_TINY)
  kwargs = dict(class_counts=(2, "all", 50), num_episodes=3, conditioning_size=2,
                num_samples=2, iterations=(0, 2), batch_size=2, seed=1)
  out = evaluation.generation_fidelity(model, _MOCK_DATA, "test", **kwargs)
  again = evaluation.generation_fidelity(model, _MOCK_DATA, "test", **kwargs)
  assert out == again  # deterministic given the seed
  assert out["class_counts"] == ["2", "all", "50"] and out["iterations"] == [0, 2]
  assert out["conditioned"] == (model_type == "kanerva") and out["distance"] == "pixel L2"
  assert set(out["results"]) == {"2", "all"} and "50" in out["skipped"]
  for r in out["results"].values():
    assert all(0 <= v <= 1 for v in r["nn_in_conditioning"]) and len(r["distance_ratio"]) == 2
    assert all(np.isfinite(v) and v > 0 for v in r["distance_ratio"])


def test_generation_fidelity_scores_the_episode_against_other_classes(labelled_omniglot,
                                                                      monkeypatch):
  """With samples that are the conditioning images the score is 1 (ratio 0); the other
  images are distinct test images of classes that are not in the episode, as many per class
  as the episode has."""
  del labelled_omniglot
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  images, labels, _ = data_lib.load_split("omniglot", "test")
  flat = images.reshape(len(images), -1).astype(np.float32)

  def label_of(image):
    return labels[np.flatnonzero((flat == image.reshape(1, -1)).all(1))]

  seen = []

  def copy_conditioning(model, episodes, num_samples, iterations, seed):
    del model, seed
    return tf.stack([episodes[:, :num_samples]] * (iterations + 1))
  real = evaluation.nearest_neighbour_fidelity

  def record(samples, conditioning, others):
    seen.append((conditioning, others))
    return real(samples, conditioning, others)
  monkeypatch.setattr(evaluation, "_generated", copy_conditioning)
  monkeypatch.setattr(evaluation, "nearest_neighbour_fidelity", record)
  model = runs.build_model("kanerva", OMNIGLOT_TINY)
  out = evaluation.generation_fidelity(model, _MOCK_DATA, "test", class_counts=(2,),
                                       num_episodes=3, conditioning_size=4, num_samples=3,
                                       iterations=(1,), batch_size=2, seed=0)
  r = out["results"]["2"]
  assert r["nn_in_conditioning"] == [1.] and r["distance_ratio"] == [0.]
  conditioning, others = seen[0]
  assert conditioning.shape == others.shape == (3, 4, 28, 28, 1)
  for a_e, o_e in zip(conditioning, others):
    classes = np.concatenate([label_of(a) for a in a_e])
    others_classes = np.concatenate([label_of(o) for o in o_e])
    assert len(classes) == len(others_classes) == 4
    assert len(set(classes)) == len(set(others_classes)) == 2
    assert not set(classes) & set(others_classes)
    assert sorted(np.unique(classes, return_counts=True)[1]) == sorted(
        np.unique(others_classes, return_counts=True)[1])
    assert len({o.tobytes() for o in o_e}) == len(o_e)   # drawn without replacement


def test_matched_others_copy_the_class_structure():
  by_class = {0: np.arange(0, 5), 1: np.arange(5, 7), 2: np.arange(7, 12), 3: np.arange(12, 20)}
  rng = np.random.default_rng(0)
  for _ in range(20):
    got = evaluation._matched_others(rng, by_class, np.array([0, 0, 0, 1]))
    labels = np.searchsorted([5, 7, 12, 20], got, side="right")
    assert sorted(np.unique(labels, return_counts=True)[1]) == [1, 3]
    assert set(labels) <= {2, 3} and len(set(got)) == 4
  # Three images of class 0 need a class with >= 3 images outside {0, 2, 3}: only class 1
  # (2 images) is left.
  assert evaluation._matched_others(rng, by_class, np.array([0, 0, 0, 2, 3])) is None


def test_generation_fidelity_rejects_bad_arguments():
  model = runs.build_model("vae", OMNIGLOT_TINY)
  for kwargs, message in [({"num_episodes": 0}, "num_episodes must be an int >= 1"),
                          ({"conditioning_size": 0}, "conditioning_size must be an int >= 1"),
                          ({"iterations": ()}, "iterations must not be empty"),
                          ({"iterations": (-1,)}, "iteration must be an int >= 0"),
                          ({"class_counts": ("two",)}, "class count must be an int")]:
    with pytest.raises(ValueError, match=message):
      evaluation.generation_fidelity(model, _MOCK_DATA, "test", **kwargs)
