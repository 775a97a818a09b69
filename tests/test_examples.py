"""The examples in examples/ run, print their tables and show what their docstrings claim.

Each example's `main()` is imported from its file and run (seconds on one CPU core); the
assertions are the claims of the example's docstring, with its stated tolerances.
"""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def associative():
  return _load("associative_memory")


@pytest.fixture(scope="module")
def joint():
  return _load("joint_distribution")


# ----------------------------------------------------------------------------- associative memory
def test_associative_memory_bayes_beats_least_squares_where_it_should(associative, capsys):
  results = associative.main()
  printed = capsys.readouterr().out
  assert "pairs N  least squares  KanervaMemory" in printed
  assert set(results) == set(associative.NUM_PAIRS) and associative.K in results
  assert max(r["ridge_gap"] for r in results.values()) < 1e-9   # posterior mean = ridge
  for n, r in results.items():
    exact, noisy = r["exact"], r["noisy"]
    # Noisy writes: the Bayesian write is the better memory at every N.
    assert noisy["kanerva"] < noisy["least_squares"], (n, noisy)
    if n == associative.K:  # near capacity least squares amplifies the key noise
      assert exact["kanerva"] < 0.05 * exact["least_squares"], exact
      assert noisy["kanerva"] < 0.05 * noisy["least_squares"], noisy
      assert exact["kanerva"] < 0.5
    if n < 16:  # few pairs, exact writes: both near perfect, comparable
      assert exact["least_squares"] < 0.03 and exact["kanerva"] < 0.03, exact
      assert abs(exact["kanerva"] - exact["least_squares"]) < 0.01, exact
    else:
      assert exact["kanerva"] <= exact["least_squares"], (n, exact)
  beyond = results[max(results)]["exact"]  # far beyond capacity: the same least-squares fit
  assert abs(beyond["kanerva"] - beyond["least_squares"]) < 0.05 * beyond["least_squares"]


def test_associative_memory_write_is_ridge_in_numpy(associative):
  """Independent numpy reference: the posterior mean is (W^T W + s2 I)^-1 W^T Z, and least
  squares recalls the stored values exactly from the exact keys while N <= K."""
  keys, values, _, _ = associative.make_pairs(16, seed=(3, 4))
  memory = associative.bayesian_memory(keys, values, noise_variance=0.09)
  w, z = keys.numpy(), values.numpy()
  ridge = np.linalg.solve(np.swapaxes(w, -1, -2) @ w + 0.09 * np.eye(associative.K),
                          np.swapaxes(w, -1, -2) @ z)
  np.testing.assert_allclose(memory.loc.numpy(), ridge, atol=1e-10)
  recall = keys @ associative.least_squares_memory(keys, values)
  np.testing.assert_allclose(recall.numpy(), z, atol=1e-9)


# ----------------------------------------------------------------------------- joint distribution
def test_joint_model_density_is_prior_times_gaussian_likelihood(joint):
  prior, w, z = joint.make_problem(seed=(1, 1))
  model = joint.joint_model(prior, w)
  m = prior.sample(seed=(2, 2))
  mean = w.numpy() @ m.numpy()
  log_lik = np.sum(-0.5 * (z.numpy() - mean) ** 2 / joint.NOISE_VARIANCE
                   - 0.5 * np.log(2 * np.pi * joint.NOISE_VARIANCE))
  np.testing.assert_allclose(model.log_prob(M=m, z=z).numpy(),
                             prior.log_prob(m).numpy() + log_lik, rtol=1e-12)
  assert z.shape == (joint.T, joint.C) and z.dtype == tf.float64


@pytest.mark.slow
def test_vi_and_nuts_recover_the_exact_posterior_of_update(joint, capsys):
  results = joint.main()
  printed = capsys.readouterr().out
  assert "VI, full-covariance Gaussian" in printed and "NUTS, 8 chains" in printed
  vi, nuts = results["vi"], results["nuts"]
  for key in ("mean", "row_covariance", "cross_covariance"):
    assert vi[key] <= joint.VI_TOLERANCE, (key, vi)
  for key in ("mean", "row_covariance"):
    assert nuts[key] <= joint.MC_TOLERANCE, (key, nuts)
  assert nuts["min_ess"] > 1000  # the chains mixed: the Monte Carlo errors mean something


# ----------------------------------------------------------------------------- pretrained model
@pytest.fixture(scope="module")
def pretrained():
  return _load("pretrained")


def test_pretrained_writes_denoises_and_generates(pretrained, tmp_path, capsys):
  out = tmp_path / "example.png"
  results = pretrained.main(out=str(out), source="bundled")
  printed = capsys.readouterr().out
  assert "Episode: T = 32 images, bundled" in printed and "Wrote" in printed
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  loc, cov = results["memory"]["loc"], results["memory"]["row_covariance"]
  assert loc.shape == (1, 64, 100) and cov.shape == (1, 64, 64)
  np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-5)
  assert np.linalg.eigvalsh(cov[0]).min() > 0  # a posterior row covariance: positive definite
  n = pretrained.N
  for key in ("originals", "noisy", "denoised", "samples"):
    images = results[key]
    assert images.shape == (n, 28, 28, 1) and images.min() >= 0 and images.max() <= 1, key
  # The docstring's numbers (shipped model, bundled episode, seed 0).
  assert 60 < results["loss"]["loss"] < 100
  error = results["error"]
  assert 0.4 < error["noisy"]["block"] < 0.6
  assert error["denoised"]["block"] < error["noisy"]["block"] - 0.1  # the blocks are filled in
  assert error["denoised"]["image"] > error["noisy"]["image"]       # ... but the images blur
  # Stateless seeds: the same seed gives the same images.
  again = pretrained.main(out=str(tmp_path / "again.png"), source="bundled")
  for key in ("denoised", "samples"):
    np.testing.assert_array_equal(again[key], results[key])


@pytest.mark.slow
def test_pretrained_runs_with_tensorflow_alone_in_under_a_minute(tmp_path):
  """The script, in a fresh process in which kanerva_tf and TFP cannot be imported."""
  code = ("import sys, runpy; sys.modules['kanerva_tf'] = None; "
          "sys.modules['tensorflow_probability'] = None; "
          f"sys.argv = ['pretrained.py', '--source=bundled', '--out={tmp_path / 'x.png'}']; "
          f"runpy.run_path({str(EXAMPLES / 'pretrained.py')!r}, run_name='__main__')")
  start = time.time()
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
  elapsed = time.time() - start
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "x.png").exists() and "Wrote" in proc.stdout
  assert elapsed < 60, elapsed


@pytest.mark.slow
def test_bundled_episode_is_the_tfds_test_split_as_kanerva_tf_loads_it(pretrained):
  """Needs the prepared Omniglot test split ($TFDS_DATA_DIR); skipped without it."""
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  try:
    images, indices = pretrained.tfds_episode(seed=0)
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"TFDS Omniglot test split not available: {type(e).__name__}")
  bundled, bundled_indices = pretrained.bundled_episode()
  np.testing.assert_array_equal(indices, bundled_indices)
  np.testing.assert_array_equal(images, bundled)
  split, _, _ = data_lib.load_split("omniglot", "test")  # the training pipeline's images
  np.testing.assert_array_equal(split[indices].astype(np.float32), bundled)
