r"""KanervaMemory as a prior inside a TFP joint distribution, and inference that recovers the
exact Bayesian write.

  python examples/joint_distribution.py

The generative model of a memory and its observations (eqs. 4 and 6 of the paper), written as a
`tfd.JointDistributionCoroutineAutoBatched`:

  M   ~ KanervaMemory(R_0, U_0)                  [K, C], a full K x K row covariance U_0
  z_t ~ N(w_t^T M, sigma^2 I_C),  t = 1..T       [T, C], addresses w [T, K] fixed

Given the observed z, the posterior p(M | z) is matrix normal and `KanervaMemory.update`
computes it in closed form (eqs. 9-11). Two generic TFP inference methods, which know nothing of
that closed form and see only the joint log density, must find the same posterior:

* variational inference, `tfp.vi.fit_surrogate_posterior`, with a full-covariance Gaussian over
  all K*C entries of M (no matrix-normal structure assumed: it has to find that the columns are
  independent with the same row covariance U'). Adam with a decaying learning rate; the mean
  and covariance are averaged over the last VI_AVERAGE iterates (reparameterised gradients stay
  noisy at the optimum, and the average removes most of that noise);
* Markov chain Monte Carlo, `tfp.mcmc.NoUTurnSampler` with dual-averaging step-size
  adaptation, NUM_CHAINS chains.

Compared with the exact posterior MN(R', U', I_C) (printed: max errors over entries):

* VI: |mean - R'| <= 0.05 sd (sd = sqrt(U'_kk) of the entry), |row covariance - U'| <=
  0.05 sqrt(U'_kk U'_ll) (5 % on the correlation scale), and every covariance between two
  columns (0 exactly) <= 0.05 min_k U'_kk;
* NUTS: every error within 4 Monte Carlo standard errors, from the effective sample size
  (ESS) of each entry: sd / sqrt(ESS) for a mean, sqrt((U'_kk U'_ll + U'_kl^2) / (C ESS)) for a
  row-covariance entry (C columns pooled).

Sizes are small (K=3, C=2, T=5) so that both run in seconds; the prior's mean and row covariance
and the addresses are random (fixed seed), the observations a draw from the model itself.
Shapes: K memory rows, C code size, T observations, N samples.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from kanerva_tf import KanervaMemory

tfb, tfd = tfp.bijectors, tfp.distributions

K, C, T = 3, 2, 5
NOISE_VARIANCE = 0.5   # sigma^2 of eq. 6
DTYPE = tf.float64
VI_STEPS, VI_SAMPLES, VI_AVERAGE = 2000, 64, 700
NUM_CHAINS, NUM_RESULTS, NUM_BURNIN = 8, 1000, 500
VI_TOLERANCE = 0.05    # in posterior standard deviations
MC_TOLERANCE = 4.0     # in Monte Carlo standard errors


def make_problem(seed):
  """A prior KanervaMemory (R_0 [K, C], U_0 [K, K]), addresses w [T, K] and observed z [T, C]."""
  s_loc, s_cov, s_w, s_data = tfp.random.split_seed(seed, 4)
  loc = tf.random.stateless_normal([K, C], s_loc, dtype=DTYPE)
  a = tf.random.stateless_normal([K, K], s_cov, dtype=DTYPE)
  row_covariance = a @ tf.transpose(a) / K + 0.5 * tf.eye(K, dtype=DTYPE)   # full, correlated
  prior = KanervaMemory(loc, row_covariance, name="M")
  w = tf.random.stateless_normal([T, K], s_w, dtype=DTYPE)
  _, z = joint_model(prior, w).sample(seed=s_data)
  return prior, w, z


def joint_model(prior, w):
  """p(M, z) = p(M) prod_t N(z_t; w_t^T M, sigma^2 I_C), components named "M" and "z"."""

  @tfd.JointDistributionCoroutineAutoBatched
  def model():
    m = yield prior                                                      # [..., K, C]
    yield tfd.Independent(tfd.Normal(tf.einsum("tk,...kc->...tc", w, m),
                                     tf.constant(NOISE_VARIANCE ** 0.5, DTYPE)),
                          reinterpreted_batch_ndims=2, name="z")         # [..., T, C]
  return model


def _moments(mean, covariance):
  """Mean [K*C] and covariance [K*C, K*C] of vec(M) (row-major: entry (k, c) at k*C + c) ->
  mean [K, C], row covariance averaged over columns [K, K], largest |cov| between two columns."""
  cov = covariance.reshape(K, C, K, C)
  row = np.mean([cov[:, c, :, c] for c in range(C)], axis=0)
  cross = max((np.abs(cov[:, c, :, d]).max() for c in range(C) for d in range(C) if c != d),
              default=0.0)
  return mean.reshape(K, C), row, cross


def fit_vi(model, z, seed):
  """Full-covariance Gaussian surrogate over vec(M) fitted by maximising the ELBO."""
  loc = tf.Variable(tf.zeros([K * C], DTYPE), name="q_loc")
  scale_tril = tfp.util.TransformedVariable(tf.eye(K * C, dtype=DTYPE),
                                            tfb.FillScaleTriL(diag_shift=None), name="q_scale")
  surrogate = tfd.TransformedDistribution(tfd.MultivariateNormalTriL(loc, scale_tril),
                                          tfb.Reshape([K, C], event_shape_in=[K * C]))
  optimizer = keras.optimizers.Adam(
      keras.optimizers.schedules.PolynomialDecay(0.05, VI_STEPS, end_learning_rate=0.002))
  _, locs, trils = tfp.vi.fit_surrogate_posterior(
      lambda m: model.log_prob(M=m, z=z), surrogate, optimizer, VI_STEPS,
      sample_size=VI_SAMPLES, seed=seed, jit_compile=True,
      trace_fn=lambda t: (t.loss, tf.identity(loc), tf.convert_to_tensor(scale_tril)))
  locs, trils = locs.numpy()[-VI_AVERAGE:], trils.numpy()[-VI_AVERAGE:]
  return _moments(locs.mean(axis=0), np.mean(trils @ np.swapaxes(trils, -1, -2), axis=0))


def sample_nuts(model, z, init, seed):
  """NUTS samples of M [N, K, C] (N = NUM_CHAINS * NUM_RESULTS) and the ESS of each entry."""
  kernel = tfp.mcmc.DualAveragingStepSizeAdaptation(
      tfp.mcmc.NoUTurnSampler(lambda m: model.log_prob(M=m, z=z), step_size=0.1),
      num_adaptation_steps=int(0.8 * NUM_BURNIN))

  @tf.function(jit_compile=True)
  def run():
    return tfp.mcmc.sample_chain(NUM_RESULTS, tf.broadcast_to(init, [NUM_CHAINS, K, C]),
                                 kernel=kernel, num_burnin_steps=NUM_BURNIN, trace_fn=None,
                                 seed=seed)

  samples = run()                                                      # [NUM_RESULTS, chains, K, C]
  ess = tfp.mcmc.effective_sample_size(samples, cross_chain_dims=1)   # [K, C]
  return samples.numpy().reshape(-1, K, C), ess.numpy()


def main(seed=(0, 0)):
  """Prints the comparison and returns the errors and their tolerances."""
  s_problem, s_vi, s_mc = tfp.random.split_seed(seed, 3)
  prior, w, z = make_problem(s_problem)
  exact = prior.update(w, z, noise_variance=NOISE_VARIANCE)            # eqs. 9-11
  r, u = exact.loc.numpy(), exact.row_covariance.numpy()
  sd = np.sqrt(np.diag(u))                                             # [K]
  scale = np.outer(sd, sd)                                             # sqrt(U'_kk U'_ll)
  model = joint_model(prior, w)
  print(f"M ~ KanervaMemory(R_0, U_0) [K={K}, C={C}], z_t ~ N(w_t^T M, {NOISE_VARIANCE} I), "
        f"T={T} observations")
  print("exact posterior (KanervaMemory.update): row sd", np.round(sd, 3))

  start = time.time()
  vi_mean, vi_row, vi_cross = fit_vi(model, z, s_vi)
  vi = {"mean": float(np.max(np.abs(vi_mean - r) / sd[:, None])),
        "row_covariance": float(np.max(np.abs(vi_row - u) / scale)),
        "cross_covariance": float(vi_cross / np.min(scale)), "seconds": time.time() - start}
  print(f"\nVI, full-covariance Gaussian over the {K * C} entries ({VI_STEPS} steps, "
        f"{vi['seconds']:.1f} s); errors in posterior sd, tolerance {VI_TOLERANCE}:")
  print(f"  mean {vi['mean']:.4f}   row covariance {vi['row_covariance']:.4f}   "
        f"between columns {vi['cross_covariance']:.4f}")

  start = time.time()
  samples, ess = sample_nuts(model, z, prior.loc, s_mc)
  d = samples - samples.mean(axis=0)
  mc_row = np.einsum("nkc,nlc->kl", d, d) / (len(samples) * C)
  mean_se = sd[:, None] / np.sqrt(ess)                                 # [K, C]
  row_se = np.sqrt((scale ** 2 + u ** 2) / (C * ess.min()))           # [K, K]
  mc = {"mean": float(np.max(np.abs(samples.mean(axis=0) - r) / mean_se)),
        "row_covariance": float(np.max(np.abs(mc_row - u) / row_se)),
        "min_ess": float(ess.min()), "seconds": time.time() - start}
  print(f"\nNUTS, {NUM_CHAINS} chains x {NUM_RESULTS} samples ({mc['seconds']:.1f} s, smallest "
        f"ESS {mc['min_ess']:.0f}); errors in Monte Carlo standard errors, tolerance "
        f"{MC_TOLERANCE}:")
  print(f"  mean {mc['mean']:.2f}   row covariance {mc['row_covariance']:.2f}")
  return {"vi": vi, "nuts": mc}


if __name__ == "__main__":
  main()
