"""Tests of kanerva_tf.memory.KanervaMemory against independent numpy / MVN references."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import tensorflow_probability as tfp

from kanerva_tf.memory import KanervaMemory

tfd = tfp.distributions

DTYPES = [np.float32, np.float64]
# Tolerances: float32 paths go through Cholesky factorisations of small matrices.
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}
BATCH_SHAPES = {"scalar": (), "vector": (2,), "matrix": (2, 3)}


def _random_spd(rng, batch, k, dtype):
  a = rng.normal(size=batch + (k, k))
  return (a @ np.swapaxes(a, -1, -2) / k + 0.5 * np.eye(k)).astype(dtype)


def _random_memory(rng, batch, k, c, dtype):
  return rng.normal(size=batch + (k, c)).astype(dtype), _random_spd(rng, batch, k, dtype)


def _vec(m):
  """Column-stacking vec of [..., K, C] -> [..., C*K]."""
  m = np.swapaxes(m, -1, -2)
  return m.reshape(m.shape[:-2] + (-1,))


def _np_posterior(r, u, w, z, obs_var):
  """Gaussian conditioning of vec(M) on vec(Z) in the joint (Appendix E), built from scratch.

  vec(M) ~ N(vec R, I_C (x) U);  vec(Z) = (I_C (x) W) vec(M) + xi,  xi ~ N(0, I_C (x) diag(obs_var)).
  Returns the posterior mean [K, C] and covariance [C*K, C*K] of vec(M).
  """
  r, u, w, z, obs_var = (np.asarray(x, np.float64) for x in (r, u, w, z, obs_var))
  c = r.shape[-1]
  eye_c = np.eye(c)
  s_mm = np.kron(eye_c, u)
  a = np.kron(eye_c, w)
  s_zm = a @ s_mm
  s_zz = a @ s_mm @ a.T + np.kron(eye_c, np.diag(obs_var))
  gain = np.linalg.solve(s_zz, s_zm).T                          # Sigma_MZ Sigma_ZZ^-1
  mean = _vec(r) + gain @ (_vec(z) - a @ _vec(r))
  cov = s_mm - gain @ s_zm
  return mean.reshape(c, -1).T, cov


def _mvn(memory):
  """The equivalent MultivariateNormalTriL over vec(M) (column stacking)."""
  r = tf.convert_to_tensor(memory.loc)
  u = tf.convert_to_tensor(memory.row_covariance)
  c = r.shape[-1]
  loc = tf.reshape(tf.linalg.matrix_transpose(r), tf.concat([tf.shape(r)[:-2], [-1]], 0))
  cov = tf.linalg.LinearOperatorKronecker(
      [tf.linalg.LinearOperatorIdentity(c, dtype=r.dtype),
       tf.linalg.LinearOperatorFullMatrix(u)]).to_dense()
  return tfd.MultivariateNormalTriL(loc=loc, scale_tril=tf.linalg.cholesky(cov))


# ---------------------------------------------------------------- construction / shapes
@pytest.mark.parametrize("batch", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
def test_shapes_and_properties(batch):
  rng = np.random.default_rng(0)
  r, u = _random_memory(rng, batch, 4, 3, np.float32)
  mem = KanervaMemory(r, u)
  assert mem.event_shape == [4, 3]
  assert mem.batch_shape == list(batch)
  assert list(mem.batch_shape_tensor().numpy()) == list(batch)
  assert list(mem.event_shape_tensor().numpy()) == [4, 3]
  assert mem.sample(5, seed=1).shape == (5,) + batch + (4, 3)
  assert mem.log_prob(mem.sample(seed=2)).shape == batch
  np.testing.assert_array_equal(mem.mean(), np.broadcast_to(r, batch + (4, 3)))
  np.testing.assert_allclose(mem.variance(), np.broadcast_to(
      np.diagonal(u, axis1=-2, axis2=-1)[..., None], batch + (4, 3)), rtol=1e-6)


def test_batch_shape_broadcasts_between_parameters():
  rng = np.random.default_rng(1)
  r = rng.normal(size=(3, 1, 4, 2)).astype(np.float32)
  u = _random_spd(rng, (5,), 4, np.float32)
  mem = KanervaMemory(r, u)
  assert mem.batch_shape == [3, 5]
  assert mem[1:, 2].batch_shape == [2]


def test_variables_stay_variables_and_get_gradients():
  loc = tf.Variable(tf.zeros([4, 3]), name="loc")
  chol = tf.Variable(tf.eye(4), name="chol")
  mem = KanervaMemory(loc, tfp.util.DeferredTensor(chol, lambda l: l @ tf.transpose(l)))
  assert mem.loc is loc
  names = {v.name for v in mem.trainable_variables}
  assert len(names) == 2
  with tf.GradientTape() as tape:
    lp = mem.log_prob(tf.ones([4, 3]))
  grads = tape.gradient(lp, [loc, chol])
  assert all(g is not None for g in grads)
  assert all(np.all(np.isfinite(g)) for g in grads)


# ---------------------------------------------------------------- density / entropy / KL
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
def test_log_prob_and_entropy_match_mvn_over_vec(dtype, batch):
  rng = np.random.default_rng(2)
  r, u = _random_memory(rng, batch, 5, 3, dtype)
  mem = KanervaMemory(r, u)
  x = rng.normal(size=batch + (5, 3)).astype(dtype)
  mvn = _mvn(mem)
  np.testing.assert_allclose(mem.log_prob(x), mvn.log_prob(_vec(x)), **TOL[dtype])
  np.testing.assert_allclose(mem.entropy(), mvn.entropy(), **TOL[dtype])
  # And against scipy for one element, independent of TFP altogether.
  idx = (0,) * len(batch)
  ref = scipy.stats.multivariate_normal(_vec(r[idx]), np.kron(np.eye(3), u[idx])).logpdf(_vec(x[idx]))
  np.testing.assert_allclose(mem.log_prob(x).numpy()[idx], ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
def test_kl_matches_mvn_over_vec(dtype, batch):
  rng = np.random.default_rng(3)
  q = KanervaMemory(*_random_memory(rng, batch, 5, 3, dtype))
  p = KanervaMemory(*_random_memory(rng, (), 5, 3, dtype))
  kl = tfd.kl_divergence(q, p)
  assert kl.shape == batch
  np.testing.assert_allclose(kl, tfd.kl_divergence(_mvn(q), _mvn(p)), **TOL[dtype])
  np.testing.assert_allclose(tfd.kl_divergence(q, q), np.zeros(batch), atol=1e-4)


def test_sample_moments():
  rng = np.random.default_rng(4)
  r, u = _random_memory(rng, (), 3, 2, np.float64)
  n = 40000
  x = KanervaMemory(r, u).sample(n, seed=(1, 2)).numpy()            # [n, K, C]
  # Standard error of a mean is ~ sqrt(U_kk / n) < 0.01 here; of a covariance ~ 0.01.
  np.testing.assert_allclose(x.mean(0), r, atol=0.03)
  for c in range(2):
    np.testing.assert_allclose(np.cov(x[:, :, c].T), u, atol=0.05)
  # Columns are independent (V = I_C).
  cross = (x[:, :, 0] - r[:, 0]).T @ (x[:, :, 1] - r[:, 1]) / n
  np.testing.assert_allclose(cross, np.zeros((3, 3)), atol=0.05)
  # Stateless: same seed, same sample.
  np.testing.assert_array_equal(KanervaMemory(r, u).sample(seed=(3, 4)),
                                KanervaMemory(r, u).sample(seed=(3, 4)))


# ---------------------------------------------------------------- writing
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
@pytest.mark.parametrize("with_z_variance", [False, True])
def test_update_equals_gaussian_conditioning(dtype, batch, with_z_variance):
  rng = np.random.default_rng(5)
  k, c, t = 4, 3, 5
  r, u = _random_memory(rng, batch, k, c, dtype)
  w = rng.normal(size=batch + (t, k)).astype(dtype)
  z = rng.normal(size=batch + (t, c)).astype(dtype)
  noise = 0.7
  z_var = rng.uniform(0.1, 1.0, size=batch + (t,)).astype(dtype) if with_z_variance else None
  post = KanervaMemory(r, u).update(w, z, noise_variance=noise, z_variance=z_var)
  for idx in np.ndindex(*batch):
    obs_var = noise + (z_var[idx] if with_z_variance else np.zeros(t))
    mean, cov = _np_posterior(r[idx], u[idx], w[idx], z[idx], obs_var)
    np.testing.assert_allclose(post.loc.numpy()[idx], mean, **TOL[dtype])
    np.testing.assert_allclose(np.kron(np.eye(c), post.row_covariance.numpy()[idx]), cov,
                               **TOL[dtype])


def test_update_broadcasts_memory_against_episode_batch():
  rng = np.random.default_rng(6)
  r, u = _random_memory(rng, (), 4, 3, np.float64)
  w = rng.normal(size=(7, 5, 4))
  z = rng.normal(size=(7, 5, 3))
  post = KanervaMemory(r, u).update(w, z)
  assert post.batch_shape == [7]
  mean, cov = _np_posterior(r, u, w[3], z[3], np.ones(5))
  np.testing.assert_allclose(post.loc[3], mean, rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 12])
def test_online_and_chunked_equal_batch(dtype, chunk_size):
  rng = np.random.default_rng(7)
  r, u = _random_memory(rng, (2,), 6, 3, dtype)
  w = rng.normal(size=(2, 12, 6)).astype(dtype)
  z = rng.normal(size=(2, 12, 3)).astype(dtype)
  z_var = rng.uniform(0.0, 0.5, size=(2, 12)).astype(dtype)
  prior = KanervaMemory(r, u)
  batch = prior.update(w, z, z_variance=z_var, method="batch")
  online = prior.update(w, z, z_variance=z_var, method="online", chunk_size=chunk_size)
  tol = dict(rtol=1e-3, atol=1e-4) if dtype == np.float32 else TOL[dtype]
  np.testing.assert_allclose(online.loc, batch.loc, **tol)
  np.testing.assert_allclose(online.row_covariance, batch.row_covariance, **tol)


def test_online_inside_tf_function_with_xla():
  rng = np.random.default_rng(8)
  r, u = _random_memory(rng, (), 6, 3, np.float32)
  w = rng.normal(size=(2, 8, 6)).astype(np.float32)
  z = rng.normal(size=(2, 8, 3)).astype(np.float32)
  prior = KanervaMemory(r, u)

  @tf.function(jit_compile=True)
  def write(w, z):
    post = prior.update(w, z, method="online")
    return post.loc, post.row_covariance

  loc, cov = write(w, z)
  ref = prior.update(w, z)
  np.testing.assert_allclose(loc, ref.loc, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(cov, ref.row_covariance, rtol=1e-3, atol=1e-4)


def test_distribution_write_with_zero_z_variance_equals_sample_write():
  rng = np.random.default_rng(9)
  r, u = _random_memory(rng, (3,), 5, 4, np.float64)
  w = rng.normal(size=(3, 6, 5))
  z = rng.normal(size=(3, 6, 4))
  prior = KanervaMemory(r, u)
  a = prior.update(w, z, z_variance=np.zeros((3, 6)))
  b = prior.update(w, z)
  np.testing.assert_allclose(a.loc, b.loc, rtol=1e-12)
  np.testing.assert_allclose(a.row_covariance, b.row_covariance, rtol=1e-12)
  # With z_variance > 0 the write is weaker: the posterior covariance shrinks less.
  c = prior.update(w, z, z_variance=np.ones((3, 6)))
  assert np.all(np.trace(c.row_covariance, axis1=-2, axis2=-1)
                > np.trace(b.row_covariance, axis1=-2, axis2=-1))


def test_bayes_rule_identity_with_joint_distribution():
  """log p(M) + log p(Z|M) - log p(M|Z) = log p(Z), the same for every M."""
  rng = np.random.default_rng(10)
  k, c, t = 5, 3, 4
  r, u = _random_memory(rng, (), k, c, np.float64)
  w = rng.normal(size=(t, k))
  prior = KanervaMemory(r, u)

  def model():
    m = yield tfd.JointDistributionCoroutine.Root(prior)
    yield tfd.Independent(tfd.Normal(tf.einsum("tk,...kc->...tc", w, m), 1.), 2)

  joint = tfd.JointDistributionCoroutine(model)
  m0, z = joint.sample(seed=(5, 6))
  assert m0.shape == (k, c) and z.shape == (t, c)
  post = prior.update(w, z)
  ms = prior.sample(3, seed=(7, 8))
  log_joint = joint.log_prob(ms, tf.broadcast_to(z, (3, t, c)))
  evidence = log_joint - post.log_prob(ms)
  np.testing.assert_allclose(evidence, np.full(3, evidence[0]), rtol=1e-9)
  sigma_z = w @ u @ w.T + np.eye(t)
  ref = scipy.stats.multivariate_normal(_vec(w @ r), np.kron(np.eye(c), sigma_z)).logpdf(_vec(z))
  np.testing.assert_allclose(evidence[0], ref, rtol=1e-9)


@pytest.mark.slow
def test_long_float32_online_write_stays_positive_definite():
  """Thousands of one-by-one writes in float32: U stays symmetric PD and finite."""
  rng = np.random.default_rng(11)
  k, c, t = 32, 4, 3000
  addresses = rng.normal(size=(k, 16))
  addresses /= np.linalg.norm(addresses, axis=-1, keepdims=True)
  w = (rng.normal(size=(t, 16)) @ addresses.T)                       # w = b^T A, eq. 5
  z = rng.normal(size=(t, c))
  ref = KanervaMemory(np.zeros((k, c)), np.eye(k)).update(w, z)     # float64, batch
  post = KanervaMemory(np.zeros((k, c), np.float32), np.eye(k, dtype=np.float32)).update(
      w.astype(np.float32), z.astype(np.float32), method="online")
  u = post.row_covariance.numpy()
  assert np.all(np.isfinite(u)) and np.all(np.isfinite(post.loc.numpy()))
  np.testing.assert_array_equal(u, u.T)
  assert np.linalg.eigvalsh(u.astype(np.float64)).min() > 0
  assert np.all(np.isfinite(np.linalg.cholesky(u)))
  np.testing.assert_allclose(post.loc, ref.loc, atol=2e-3)
  np.testing.assert_allclose(u, ref.row_covariance, atol=1e-4)


def _np_information_posterior(r, u, w, z, obs_var):
  """Posterior (R', U') in information form, float64: U'^-1 = U^-1 + W^T D^-1 W and
  R' = U' (U^-1 R + W^T D^-1 Z), D = diag(obs_var). K x K only, so any T is cheap."""
  r, u, w, z, obs_var = (np.asarray(x, np.float64) for x in (r, u, w, z, obs_var))
  u_inv = np.linalg.inv(u)
  wd = w.T / obs_var                                             # W^T D^-1  [K, T]
  new_u = np.linalg.inv(u_inv + wd @ w)
  new_u = 0.5 * (new_u + new_u.T)
  return new_u @ (u_inv @ r + wd @ z), new_u


@pytest.mark.slow
def test_ten_thousand_float32_online_writes_stay_close_to_float64():
  """10,000 one-by-one float32 writes (the square-root on-line form): U stays symmetric
  positive definite and the posterior agrees with float64 in scale-free terms -- every
  eigenvalue of U (the smallest, ~2e-5 next to 1, is the one a covariance-form update gets
  wrong), KL to the prior and KL between the two posteriors."""
  rng = np.random.default_rng(11)
  k, c, t, s = 32, 4, 10_000, 16
  addresses = rng.normal(size=(k, s))
  addresses /= np.linalg.norm(addresses, axis=-1, keepdims=True)
  w = rng.normal(size=(t, s)) @ addresses.T                        # w = b^T A, eq. 5
  z = w @ rng.normal(size=(k, c)) + rng.normal(size=(t, c))        # Z = W M + xi
  loc_ref, u_ref = _np_information_posterior(np.zeros((k, c)), np.eye(k), w, z, np.ones(t))
  prior32 = KanervaMemory(np.zeros((k, c), np.float32), np.eye(k, dtype=np.float32))
  post = prior32.update(w.astype(np.float32), z.astype(np.float32), method="online")
  u, loc = post.row_covariance.numpy(), post.loc.numpy()
  assert u.dtype == np.float32 and np.all(np.isfinite(u)) and np.all(np.isfinite(loc))
  np.testing.assert_array_equal(u, u.T)
  assert np.all(np.isfinite(tf.linalg.cholesky(post.row_covariance).numpy()))
  eig, eig_ref = np.linalg.eigvalsh(u.astype(np.float64)), np.linalg.eigvalsh(u_ref)
  assert eig.min() > 0 and eig_ref.min() < 1e-4                    # the test is demanding
  np.testing.assert_allclose(eig, eig_ref, rtol=1e-2)
  np.testing.assert_allclose(loc, loc_ref, rtol=0, atol=1e-3 * np.abs(loc_ref).max())
  q = KanervaMemory(loc.astype(np.float64), u.astype(np.float64))
  q_ref, prior = KanervaMemory(loc_ref, u_ref), KanervaMemory(np.zeros((k, c)), np.eye(k))
  assert float(tfd.kl_divergence(q, q_ref)) < 1e-2
  np.testing.assert_allclose(float(tfd.kl_divergence(q, prior)),
                             float(tfd.kl_divergence(q_ref, prior)), rtol=1e-3)


def _assert_finite_memory(memory, w):
  """Everything read from `memory` with addresses `w` is finite, and U is SPD."""
  prior = KanervaMemory(tf.zeros_like(memory.loc), tf.eye(memory.memory_size,
                                                           dtype=memory.dtype))
  values = dict(loc=memory.loc, row_covariance=memory.row_covariance, read=memory.read(w),
                predictive=memory.predictive(w).log_prob(memory.read(w)),
                log_prob=memory.log_prob(memory.loc), entropy=memory.entropy(),
                kl=tfd.kl_divergence(memory, prior))
  for name, value in values.items():
    assert np.all(np.isfinite(np.asarray(value))), name
  u = np.asarray(memory.row_covariance, np.float64)
  assert np.linalg.eigvalsh(0.5 * (u + u.T)).min() > 0


@pytest.mark.parametrize("method, chunk_size", [("batch", None), ("online", None),
                                                ("online", 5)])
def test_extreme_but_valid_inputs_stay_finite_and_exact(method, chunk_size):
  """float32 writes and reads with codes of size 1e4, addresses 1e-6 apart and exact
  duplicates: finite, U positive definite, and equal to the float64 posterior."""
  rng = np.random.default_rng(5)
  k, c, t = 16, 8, 32
  prior = KanervaMemory(np.zeros((k, c), np.float32), np.eye(k, dtype=np.float32))
  w_random = rng.normal(size=(t, k)) / np.sqrt(k)
  w0 = rng.normal(size=(1, k)) / np.sqrt(k)
  cases = {"large codes": (w_random, 1e4 * rng.normal(size=(t, c))),
           "near-duplicate addresses": (w0 + 1e-6 * rng.normal(size=(t, k)),
                                        1e4 * rng.normal(size=(t, c))),
           "duplicate addresses": (np.repeat(w0, t, axis=0), rng.normal(size=(t, c)))}
  for name, (w, z) in cases.items():
    post = prior.update(w.astype(np.float32), z.astype(np.float32), method=method,
                        chunk_size=chunk_size)
    _assert_finite_memory(post, w.astype(np.float32))
    loc_ref, u_ref = _np_information_posterior(np.zeros((k, c)), np.eye(k), w, z, np.ones(t))
    np.testing.assert_allclose(post.loc, loc_ref, rtol=0, atol=1e-4 * np.abs(loc_ref).max(),
                               err_msg=name)
    np.testing.assert_allclose(post.row_covariance, u_ref, rtol=0, atol=1e-5, err_msg=name)
  # T identical addresses with codes z_t = one write of their mean with noise sigma^2 / T.
  w, z = cases["duplicate addresses"]
  post = prior.update(w.astype(np.float32), z.astype(np.float32), method=method,
                      chunk_size=chunk_size)
  one = prior.update(w0.astype(np.float32), z.mean(0, keepdims=True).astype(np.float32),
                     noise_variance=1. / t)
  np.testing.assert_allclose(post.loc, one.loc, atol=1e-5)
  np.testing.assert_allclose(post.row_covariance, one.row_covariance, atol=1e-5)


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize("dtype", DTYPES)
def test_read_and_predictive(dtype):
  rng = np.random.default_rng(12)
  r, u = _random_memory(rng, (2,), 5, 3, dtype)
  w = rng.normal(size=(2, 4, 5)).astype(dtype)
  mem = KanervaMemory(r, u)
  np.testing.assert_allclose(mem.read(w), w @ r, **TOL[dtype])
  pred = mem.predictive(w, noise_variance=0.5)
  assert pred.batch_shape == [2, 4] and pred.event_shape == [3]
  z = rng.normal(size=(2, 4, 3)).astype(dtype)
  for b in range(2):
    for t in range(4):
      var = w[b, t] @ u[b] @ w[b, t] + 0.5
      ref = scipy.stats.multivariate_normal(w[b, t] @ r[b], var * np.eye(3)).logpdf(z[b, t])
      np.testing.assert_allclose(pred.log_prob(z)[b, t], ref, **TOL[dtype])


def test_predictive_is_the_marginal_of_the_memory_read():
  """Appendix F eq. 19 = integral of N(z; w^T M, sigma^2) over M ~ MN(R, U, I): by sampling."""
  rng = np.random.default_rng(13)
  r, u = _random_memory(rng, (), 4, 2, np.float64)
  w = rng.normal(size=(1, 4))
  mem = KanervaMemory(r, u)
  m = mem.sample(50000, seed=(1, 1))
  zs = tf.einsum("tk,nkc->ntc", w, m) + tf.random.stateless_normal(
      (50000, 1, 2), seed=(2, 2), dtype=tf.float64)
  pred = mem.predictive(w, noise_variance=1.0)
  np.testing.assert_allclose(np.var(zs.numpy(), axis=0), pred.variance(), rtol=0.03)
  np.testing.assert_allclose(np.mean(zs.numpy(), axis=0), pred.mean(), atol=0.05)


# ---------------------------------------------------------------- gradients (float64)
def test_gradients_match_finite_differences():
  rng = np.random.default_rng(14)
  k, c, t = 3, 2, 4
  r, u = _random_memory(rng, (), k, c, np.float64)
  w = rng.normal(size=(t, k))
  z = rng.normal(size=(t, c))
  p = KanervaMemory(*_random_memory(rng, (), k, c, np.float64))
  x = rng.normal(size=(k, c))

  def through_update(r, u, w, z):
    post = KanervaMemory(r, u).update(w, z, z_variance=tf.fill([t], tf.constant(0.3, tf.float64)))
    return (tf.reduce_sum(post.loc * x) + tf.reduce_sum(post.row_covariance * x[:, :1])
            + tfd.kl_divergence(post, p) + post.log_prob(x) + tf.reduce_sum(post.read(w)))

  def through_online(r, u, w, z):
    post = KanervaMemory(r, u).update(w, z, method="online", chunk_size=3)
    return tf.reduce_sum(post.loc * x) + tf.reduce_sum(post.row_covariance)

  for fn in (through_update, through_online):
    theoretical, numerical = tf.test.compute_gradient(fn, [r, u, w, z], delta=1e-6)
    for a, b in zip(theoretical, numerical):
      assert np.all(np.isfinite(a))
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- tf.function / SavedModel
def test_passes_tf_function_boundaries_as_a_value():
  rng = np.random.default_rng(15)
  r, u = _random_memory(rng, (2,), 4, 3, np.float32)
  w = rng.normal(size=(2, 5, 4)).astype(np.float32)
  z = rng.normal(size=(2, 5, 3)).astype(np.float32)

  @tf.function
  def write(memory, w, z):
    return memory.update(w, z)

  post = write(KanervaMemory(r, u), w, z)
  assert isinstance(post, KanervaMemory)
  ref = KanervaMemory(r, u).update(w, z)
  np.testing.assert_allclose(post.loc, ref.loc, rtol=1e-5, atol=1e-6)
  assert write.experimental_get_tracing_count() == 1
  write(KanervaMemory(r + 1, u), w, z)  # same type spec: no retrace
  assert write.experimental_get_tracing_count() == 1


def test_saved_model_round_trip(tmp_path):
  rng = np.random.default_rng(16)
  r, u = _random_memory(rng, (), 4, 3, np.float32)

  class Writer(tf.Module):

    def __init__(self):
      super().__init__()
      self.loc = tf.Variable(r)
      self.cov = tf.Variable(u)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 4], tf.float32),
                                  tf.TensorSpec([None, 5, 3], tf.float32)])
    def write(self, w, z):
      prior = KanervaMemory(self.loc, self.cov)
      post = prior.update(w, z)
      return {"loc": post.loc, "row_covariance": post.row_covariance,
              "kl": tfd.kl_divergence(post, prior)}

  module = Writer()
  tf.saved_model.save(module, str(tmp_path), signatures={"write": module.write})
  loaded = tf.saved_model.load(str(tmp_path))
  w = rng.normal(size=(2, 5, 4)).astype(np.float32)
  z = rng.normal(size=(2, 5, 3)).astype(np.float32)
  want = module.write(w, z)
  got = loaded.signatures["write"](w=tf.constant(w), z=tf.constant(z))
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match=r"same K.*K=4.*K=5"):
    KanervaMemory(tf.zeros([4, 3]), tf.eye(5))
  with pytest.raises(ValueError, match="square"):
    KanervaMemory(tf.zeros([4, 3]), tf.zeros([4, 5]))
  with pytest.raises(ValueError, match=r"loc must be \[\.\.\., K, C\]"):
    KanervaMemory(tf.zeros([4]), tf.eye(4))
  with pytest.raises(ValueError, match="do not broadcast"):
    KanervaMemory(tf.zeros([2, 4, 3]), tf.eye(4, batch_shape=[3]))
  with pytest.raises(TypeError, match="floating-point"):
    KanervaMemory(tf.zeros([4, 3], tf.int32), tf.eye(4, dtype=tf.int32))
  mem = KanervaMemory(tf.zeros([4, 3]), tf.eye(4))
  with pytest.raises(ValueError, match=r"K=4.*w of shape \(2, 5\)"):
    mem.read(tf.zeros([2, 5]))
  with pytest.raises(ValueError, match=r"C=3.*z of shape"):
    mem.update(tf.zeros([2, 4]), tf.zeros([2, 7]))
  with pytest.raises(ValueError, match="same T"):
    mem.update(tf.zeros([2, 4]), tf.zeros([3, 3]))
  with pytest.raises(TypeError, match="float32.*float64"):
    mem.update(tf.zeros([2, 4], tf.float64), tf.zeros([2, 3], tf.float64))
  with pytest.raises(ValueError, match="method"):
    mem.update(tf.zeros([2, 4]), tf.zeros([2, 3]), method="exact")
  with pytest.raises(ValueError, match="chunk_size"):
    mem.update(tf.zeros([2, 4]), tf.zeros([2, 3]), method="online", chunk_size=3)


@pytest.mark.parametrize("chunk_size", [0, -1, -7, True, False, np.bool_(True), 2.0, 1.5,
                                        "2", "", [2], tf.constant(2), 5],
                         ids=lambda v: f"{type(v).__name__}:{v!r}"[:30])
def test_online_write_refuses_every_invalid_chunk_size(chunk_size):
  """No value is silently replaced by 1: each gets a ValueError that names it (5 > T = 4)."""
  mem = KanervaMemory(tf.zeros([3, 2]), tf.eye(3))
  w, z = tf.ones([4, 3]), tf.ones([4, 2])
  with pytest.raises(ValueError, match="chunk_size") as info:
    mem.update(w, z, method="online", chunk_size=chunk_size)
  assert repr(chunk_size) in str(info.value)


@pytest.mark.parametrize("chunk_size", [None, 1, np.int64(1)])
def test_online_write_default_chunk_size_is_one(chunk_size):
  rng = np.random.default_rng(4)
  r, u = _random_memory(rng, (), 3, 2, np.float64)
  w, z = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
  got = KanervaMemory(r, u).update(w, z, method="online", chunk_size=chunk_size)
  one = KanervaMemory(r, u).update(w, z, method="online", chunk_size=1)
  np.testing.assert_array_equal(got.loc, one.loc)
  np.testing.assert_array_equal(got.row_covariance, one.row_covariance)


def test_validate_args_rejects_non_positive_definite_covariance():
  bad = np.array([[1., 2.], [2., 1.]], np.float32)  # symmetric, eigenvalues 3 and -1
  with pytest.raises(tf.errors.InvalidArgumentError, match="positive definite|Cholesky"):
    KanervaMemory(tf.zeros([2, 3]), bad, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="symmetric"):
    KanervaMemory(tf.zeros([2, 3]), np.array([[1., 0.5], [0., 1.]], np.float32),
                  validate_args=True)
  good = KanervaMemory(tf.zeros([2, 3]), np.eye(2, dtype=np.float32), validate_args=True)
  assert np.isfinite(good.log_prob(tf.zeros([2, 3])))
