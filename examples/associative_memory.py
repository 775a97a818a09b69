r"""KanervaMemory as a Bayesian associative memory for arbitrary vectors: no images, no networks.

  python examples/associative_memory.py

A memory of K rows stores N key/value pairs. Key n is an address w_n [K] (random,
N(0, I/K), so |w_n| is about 1); value n is an arbitrary vector z_n [C] (N(0, I)). Writing is
`KanervaMemory.update` (eqs. 9-11) from the prior MN(0, I_K, I_C); a read from a query key q is
the posterior mean q^T R (`read`). Queries are the stored keys plus noise, q_n = w_n + e_n with
e_n ~ N(0, tau^2 I / K), and a read should return the value stored under w_n.

The baseline is the least-squares linear associative memory (Kohonen's optimal linear
associative memory), M = pinv(W) Z with W [N, K] the keys and Z [N, C] the values: the memory
that reproduces the stored values best from the exact keys.

With R = 0 and U = I the Bayesian write is ridge regression, R' = (W^T W + sigma^2 I)^-1 W^T Z
(checked here to 1e-9): least squares plus the penalty sigma^2 |M|^2 that the prior supplies.
sigma^2 (`noise_variance`, eq. 6) is how far a read may be from the stored value: here the
variance a noisy key adds to the read of a memory drawn from the prior, Var(e^T m) = tau^2, plus
the write noise when there is one. Two settings:

* exact writes: the values are stored as they are. With few pairs both memories are almost
  perfect (least squares a little better: the prior's shrinkage costs something when only the
  query is noisy). Near capacity (N close to K) W is ill-conditioned, pinv(W) amplifies the key
  noise by orders of magnitude and least squares fails; the prior keeps the Bayesian memory
  bounded. Far beyond capacity both approach the same least-squares fit.
* noisy writes: every value is written with noise N(0, s^2 I) and a read should return the
  clean value. Least squares stores the noise with the value; the Bayesian write discounts it,
  and is the better memory at every N.

Every cell is the mean squared error per value entry (the values have variance 1) over all N
pairs of NUM_MEMORIES independent memories, written as one batch [B] of memories. Shapes: B
memories, N pairs, K memory rows, C value size.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
import tensorflow_probability as tfp

from kanerva_tf import KanervaMemory

K, C = 64, 32
KEY_NOISE = 0.3      # tau: std of a query key's error, relative to |w| ~ 1
WRITE_NOISE = 0.5    # s: std of the noise added to a value when it is written (noisy writes)
NUM_PAIRS = (8, 32, 64, 128, 256)
NUM_MEMORIES = 8     # B
DTYPE = tf.float64


def make_pairs(num_pairs, seed):
  """Keys w [B, N, K], values z [B, N, C], query keys [B, N, K], write noise [B, N, C]."""
  shape_k, shape_c = [NUM_MEMORIES, num_pairs, K], [NUM_MEMORIES, num_pairs, C]
  s_key, s_value, s_query, s_write = tfp.random.split_seed(seed, 4)
  keys = tf.random.stateless_normal(shape_k, s_key, dtype=DTYPE) / K ** 0.5
  values = tf.random.stateless_normal(shape_c, s_value, dtype=DTYPE)
  queries = keys + KEY_NOISE * tf.random.stateless_normal(shape_k, s_query, dtype=DTYPE) / K ** 0.5
  write_noise = WRITE_NOISE * tf.random.stateless_normal(shape_c, s_write, dtype=DTYPE)
  return keys, values, queries, write_noise


def least_squares_memory(keys, values):
  """M = pinv(W) Z [B, K, C]: the minimum-norm least-squares fit of the values from the keys."""
  return tf.linalg.pinv(keys) @ values


def ridge_memory(keys, values, penalty):
  """M = (W^T W + penalty I)^-1 W^T Z [B, K, C]."""
  gram = tf.linalg.matmul(keys, keys, transpose_a=True) + penalty * tf.eye(K, dtype=DTYPE)
  return tf.linalg.solve(gram, tf.linalg.matmul(keys, values, transpose_a=True))


def bayesian_memory(keys, values, noise_variance):
  """The posterior KanervaMemory (batch [B], event [K, C]) after writing the N pairs."""
  prior = KanervaMemory(loc=tf.zeros([K, C], DTYPE), row_covariance=tf.eye(K, dtype=DTYPE))
  return prior.update(keys, values, noise_variance=noise_variance)


def retrieval_error(reads, targets):
  """Mean squared error per value entry."""
  return float(tf.reduce_mean(tf.square(reads - targets)))


def compare(num_pairs, seed):
  """Both memories, both settings, for N = num_pairs pairs.

  Returns:
    {"exact": {"least_squares", "kanerva"}, "noisy": {...}: retrieval errors from the noisy
     query keys; "ridge_gap": max |R' - ridge solution| over both settings}.
  """
  keys, values, queries, write_noise = make_pairs(num_pairs, seed)
  out = {"ridge_gap": 0.0}
  for setting, written, noise_variance in (
      ("exact", values, KEY_NOISE ** 2),
      ("noisy", values + write_noise, KEY_NOISE ** 2 + WRITE_NOISE ** 2)):
    memory = bayesian_memory(keys, written, noise_variance)
    out[setting] = {
        "least_squares": retrieval_error(queries @ least_squares_memory(keys, written), values),
        "kanerva": retrieval_error(memory.read(queries), values),
    }
    gap = tf.reduce_max(tf.abs(memory.loc - ridge_memory(keys, written, noise_variance)))
    out["ridge_gap"] = max(out["ridge_gap"], float(gap))
  return out


def main(seed=(0, 0)):
  """Prints the table and returns {N: compare(N)}."""
  results = {n: compare(n, tfp.random.split_seed(seed, len(NUM_PAIRS))[i])
             for i, n in enumerate(NUM_PAIRS)}
  print(f"Retrieval error from noisy keys (mean squared error per entry; values have variance 1)\n"
        f"K={K} rows, C={C}, key noise {KEY_NOISE}, write noise {WRITE_NOISE}, mean of "
        f"{NUM_MEMORIES} memories\n")
  print(f"{'':>7} {'exact writes':^29} {'noisy writes':^29}")
  print(f"{'pairs N':>7} {'least squares':>14} {'KanervaMemory':>14} {'least squares':>14} "
        f"{'KanervaMemory':>14}")
  for n, r in results.items():
    print(f"{n:>7} {r['exact']['least_squares']:>14.4f} {r['exact']['kanerva']:>14.4f} "
          f"{r['noisy']['least_squares']:>14.4f} {r['noisy']['kanerva']:>14.4f}")
  gap = max(r["ridge_gap"] for r in results.values())
  print(f"\nKanervaMemory's posterior mean = ridge regression with penalty sigma^2: max |difference| "
        f"{gap:.1e}")
  return results


if __name__ == "__main__":
  main()
