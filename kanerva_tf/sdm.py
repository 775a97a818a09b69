"""Kanerva's sparse distributed memory (SDM), Appendix B of the paper, eqs. 13-14.

Shapes: K hard addresses (memory rows), D pattern dimension (the "input dimensionality" D of
Appendix B; not the image depth of the package glossary), N patterns written or queries read.
Every pattern, address and read-out is a vector in {-1, +1}^D.
"""

import numpy as np
import tensorflow as tf

__all__ = ["SparseDistributedMemory"]


def _is_int(x):
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_positive_int(value, name, what):
  if not _is_int(value) or value < 1:
    raise ValueError(f"SparseDistributedMemory: {name} must be an int >= 1 ({what}); "
                     f"got {value!r} of type {type(value).__name__}.")


def _check_radius(radius, dim):
  if not _is_int(radius) or radius < 0 or (dim is not None and radius > dim):
    bound = f"0 <= radius <= D={dim}" if dim is not None else "radius >= 0"
    raise ValueError(
        "SparseDistributedMemory: radius must be an int with "
        f"{bound} (an address is selected when its Hamming distance to the input is "
        f"<= radius, eq. 13); got {radius!r} of type {type(radius).__name__}.")


def _check_seed(seed):
  """A Python int, or a pair of ints / an integer `Tensor` of shape [2] -> int64[2]."""
  if _is_int(seed):
    return tf.constant([0, int(seed)], dtype=tf.int64)
  if isinstance(seed, (bool, np.bool_, float, str)) or seed is None:
    raise ValueError("SparseDistributedMemory.random: seed must be an int or a stateless seed "
                     f"of two ints (e.g. (0, 1)); got {seed!r}.")
  seed = tf.convert_to_tensor(seed)
  if not seed.dtype.is_integer or seed.shape != [2]:
    raise ValueError("SparseDistributedMemory.random: seed must be an int or a stateless seed "
                     f"of two ints, shape [2]; got dtype {seed.dtype.name} shape {seed.shape}.")
  return tf.cast(seed, tf.int64)


def _to_signs(x, name, dim, where, rows="N"):
  """Converts `x` to a `Tensor` [N, D] and checks that its entries are +1 or -1.

  The value check runs eagerly (ValueError); inside a `tf.function` on a non-constant tensor
  it is a `tf.debugging` assertion (InvalidArgumentError when the function runs).
  """
  x = tf.convert_to_tensor(x, name=name)   # no dtype_hint: it would recast bool, uint8
  form = f"[{rows}, D={dim}] with entries in {{-1, +1}}"
  if x.dtype == tf.bool:
    raise ValueError(f"SparseDistributedMemory.{where}: {name} must be {form}; got dtype bool. "
                     "Map bits b in {0, 1} to 2 * b - 1.")
  if not (x.dtype.is_floating or x.dtype.is_integer) or x.dtype.is_unsigned:
    raise ValueError(f"SparseDistributedMemory.{where}: {name} must be {form} (a signed real "
                     f"dtype); got dtype {x.dtype.name}.")
  if x.shape.rank != 2:
    raise ValueError(f"SparseDistributedMemory.{where}: {name} must be {form}; "
                     f"got shape {x.shape}.")
  if x.shape[-1] is not None and x.shape[-1] != dim:
    raise ValueError(f"SparseDistributedMemory.{where}: {name} must be {form} to match the "
                     f"memory's dimension D={dim}; got shape {x.shape} (D={x.shape[-1]}).")
  ok = tf.equal(tf.abs(x), tf.ones([], x.dtype))
  static_ok = tf.get_static_value(ok)
  if static_ok is not None:
    if not np.all(static_ok):
      bad = tf.get_static_value(x)[~static_ok]
      raise ValueError(
          f"SparseDistributedMemory.{where}: {name} must be {form}; got {bad.size} of "
          f"{static_ok.size} entries outside {{-1, +1}} (values such as {np.unique(bad)[:5]}). "
          "Map bits b in {0, 1} to 2 * b - 1.")
  else:
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.reduce_all(ok), True,
        message=f"SparseDistributedMemory.{where}: {name} must be {form}.")]):
      x = tf.identity(x)
  return x


class SparseDistributedMemory(tf.experimental.ExtensionType):
  """Kanerva's sparse distributed memory (Kanerva, 1988), Appendix B eqs. 13-14.

  An immutable value: `write` returns a new memory and leaves this one unchanged. It is a
  `tf.experimental.ExtensionType`, so it crosses `tf.function` boundaries and nests in
  `tf.nest` structures.

  #### Mathematical Details

  A fixed table of K hard addresses A `[K, D]`, uniform random in {-1, +1}^D, points to a
  modifiable table of integer counters M `[K, D]`, zero at the start. For a, b in {-1, +1}^D
  the Hamming distance is h(a, b) = (D - a . b) / 2, and an input y selects the addresses
  within `radius` tau of it:

  ```none
  w_k(y) = 1  if h(y, A_k) <= tau,  0 otherwise                          (eq. 13)
  write x at address y:   M_k <- M_k + w_k(y) x        for every k
  read at address y:      x_hat = +1  if sum_k w_k(y) M_k > 0,  -1 otherwise   (eq. 14)
  ```

  per component d of x_hat. Autoassociative writes use the pattern as its own address
  (y = x); heteroassociative writes store data x at a separate address y. Writing N
  patterns at once adds W^T X `[K, D]` (W = [w(y_1); ...; w(y_N)] `[N, K]`), which is the
  same as writing them one by one in any order: the counters only add.

  Reading follows eq. 14 to the letter: a component whose sum is exactly 0 reads -1, and a
  query that selects no address (every h(y, A_k) > tau) reads the all -1 vector. Iterative
  reading feeds each read-out back as the next query, x_hat^(i+1) = read(x_hat^(i)); for an
  autoassociative memory this moves a noisy query towards the stored pattern when it starts
  within the critical distance (Kanerva 1988), and for heteroassociative contents it
  follows the stored chain y -> x.

  For random inputs each address is selected with probability
  p = P(Binomial(D, 1/2) <= tau), so about p K addresses take part in each write and read.

  The distances are computed with a float32 matmul (exact: integers of size <= D); the
  counter updates with a float32 matmul (exact for N < 2^24 patterns per write) and the read
  sums in float64 (exact up to 2^53); the counters are int32.

  #### Examples

  ```python
  sdm = SparseDistributedMemory.random(num_addresses=10000, dim=256, radius=112, seed=0)
  sdm = sdm.write(patterns)                  # [N, D] in {-1, +1}; autoassociative
  sdm = sdm.write(data, addresses=keys)      # heteroassociative
  reads = sdm.read(queries, iterations=3)    # [3, N, D] in {-1, +1}, iterative reading
  ```

  #### References

  [1] Pentti Kanerva. Sparse Distributed Memory. MIT Press, 1988.
  [2] Yan Wu, Greg Wayne, Alex Graves, Timothy Lillicrap. The Kanerva Machine: A
      Generative Distributed Memory. ICLR 2018, Appendix B. https://arxiv.org/abs/1804.01756
  """

  addresses: tf.Tensor
  counters: tf.Tensor
  radius: int

  def __init__(self, addresses, radius, counters=None):
    """Builds a memory from its hard addresses (and counters).

    Most users call `SparseDistributedMemory.random` instead.

    Args:
      addresses: `[K, D]` hard addresses A with entries in {-1, +1} (any real dtype;
        stored as float32).
      radius: Python int tau, 0 <= tau <= D: an address is selected when its Hamming
        distance to the input is <= tau (eq. 13).
      counters: optional integer `[K, D]` contents M (stored as int32); None means zeros.

    Raises:
      ValueError: addresses not `[K, D]` in {-1, +1}; a bad radius; counters not an
        integer `[K, D]`.
    """
    addresses = tf.convert_to_tensor(addresses, name="addresses")
    dim = tf.compat.dimension_value(addresses.shape[-1]) if addresses.shape.rank else None
    if addresses.shape.rank != 2 or dim is None or addresses.shape[0] is None:
      raise ValueError("SparseDistributedMemory: addresses must be [K, D] (static shape) with "
                       f"entries in {{-1, +1}}; got shape {addresses.shape}.")
    _check_radius(radius, dim)
    addresses = tf.cast(_to_signs(addresses, "addresses", dim, "__init__", rows="K"), tf.float32)
    if counters is None:
      counters = tf.zeros(addresses.shape, tf.int32)
    else:
      counters = tf.convert_to_tensor(counters, name="counters")
      if not counters.dtype.is_integer or counters.shape != addresses.shape:
        raise ValueError(
            f"SparseDistributedMemory: counters must be integers [K, D] = {addresses.shape} "
            f"like the addresses; got dtype {counters.dtype.name} shape {counters.shape}.")
      counters = tf.cast(counters, tf.int32)
    self.addresses = addresses
    self.counters = counters
    self.radius = int(radius)

  def __validate__(self):
    # Runs also when a memory is rebuilt from its components (e.g. out of a tf.function):
    # static checks only; the values were checked by __init__.
    if (self.addresses.shape.rank != 2 or self.addresses.dtype != tf.float32
        or self.counters.dtype != tf.int32 or self.counters.shape != self.addresses.shape):
      raise ValueError("SparseDistributedMemory: addresses must be float32 [K, D] and counters "
                       f"int32 [K, D]; got {self.addresses.dtype.name} {self.addresses.shape} "
                       f"and {self.counters.dtype.name} {self.counters.shape}.")

  @classmethod
  def random(cls, num_addresses, dim, radius, seed):
    """A memory with uniform random hard addresses in {-1, +1}^D and zero counters.

    Args:
      num_addresses: K, a Python int >= 1.
      dim: D, a Python int >= 1.
      radius: tau, a Python int with 0 <= tau <= D (eq. 13). For random inputs a fraction
        P(Binomial(D, 1/2) <= tau) of the addresses is selected (e.g. ~2.7 % for D=256,
        tau=112).
      seed: a Python int or a stateless seed of two ints (`tf.random.stateless_*`);
        the same seed gives the same addresses.

    Returns:
      A `SparseDistributedMemory` with addresses `[K, D]` and counters zero.

    Raises:
      ValueError: num_addresses or dim not an int >= 1, a bad radius or seed.
    """
    _check_positive_int(num_addresses, "num_addresses", "K, the number of hard addresses")
    _check_positive_int(dim, "dim", "D, the pattern dimension")
    _check_radius(radius, dim)
    seed = _check_seed(seed)
    bits = tf.random.stateless_uniform([num_addresses, dim], seed=seed, minval=0, maxval=2,
                                       dtype=tf.int32)
    return cls(tf.cast(2 * bits - 1, tf.float32), radius)

  def __repr__(self):
    return (f"SparseDistributedMemory(num_addresses={self.num_addresses}, dim={self.dim}, "
            f"radius={self.radius})")

  @property
  def num_addresses(self):
    """K, the number of hard addresses (static int)."""
    return tf.compat.dimension_value(self.addresses.shape[0])

  @property
  def dim(self):
    """D, the pattern dimension (static int)."""
    return tf.compat.dimension_value(self.addresses.shape[1])

  # --------------------------------------------------------------- selection
  def _dots(self, y):
    """y A^T `[N, K]`, float32 (exact integers in [-D, D])."""
    return tf.linalg.matmul(tf.cast(y, tf.float32), self.addresses, transpose_b=True)

  def _weights(self, y):
    """Eq. 13 on checked float inputs: h <= tau  <=>  y . A_k >= D - 2 tau."""
    return tf.cast(self._dots(y) >= float(self.dim - 2 * self.radius), tf.float32)

  def hamming_distance(self, inputs):
    """h(y_n, A_k) = (D - y_n . A_k) / 2 for every input and address.

    Args:
      inputs: `[N, D]` in {-1, +1}.

    Returns:
      int32 `[N, K]`.
    """
    y = _to_signs(inputs, "inputs", self.dim, "hamming_distance")
    return tf.cast(tf.round((self.dim - self._dots(y)) / 2.), tf.int32)

  def weights(self, inputs):
    """The selection weights w of eq. 13: 1 where h(y_n, A_k) <= radius, else 0.

    Args:
      inputs: `[N, D]` in {-1, +1}.

    Returns:
      float32 `[N, K]` of 0s and 1s.
    """
    return self._weights(_to_signs(inputs, "inputs", self.dim, "weights"))

  # ----------------------------------------------------------------- writing
  def write(self, patterns, addresses=None):
    """Stores N patterns: M_k <- M_k + w_k(y_n) x_n for every selected address.

    Args:
      patterns: the data x `[N, D]` in {-1, +1}.
      addresses: optional `[N, D]` in {-1, +1}, the addresses y at which to store them
        (heteroassociative); None stores each pattern at itself, y = x (autoassociative).

    Returns:
      A new `SparseDistributedMemory` with the same hard addresses and the updated
      counters (this one is unchanged). Writing in several calls or in one gives the
      same counters.

    Raises:
      ValueError: patterns or addresses not `[N, D]` in {-1, +1}, D not the memory's, or
        different N.
    """
    x = _to_signs(patterns, "patterns", self.dim, "write")
    if addresses is None:
      y = x
    else:
      y = _to_signs(addresses, "addresses", self.dim, "write")
      if x.shape[0] is not None and y.shape[0] is not None and x.shape[0] != y.shape[0]:
        raise ValueError(
            "SparseDistributedMemory.write: patterns [N, D] and addresses [N, D] must have "
            f"the same N (one address per pattern); got {x.shape} and {y.shape}.")
    w = self._weights(y)                                                   # [N, K]
    delta = tf.linalg.matmul(w, tf.cast(x, tf.float32), transpose_a=True)  # W^T X [K, D]
    counters = self.counters + tf.cast(tf.round(delta), tf.int32)
    return SparseDistributedMemory(self.addresses, self.radius, counters)

  # ----------------------------------------------------------------- reading
  def read(self, queries, iterations=1):
    """Iterative reading, eq. 14: x_hat^(1) = read(y), x_hat^(i+1) = read(x_hat^(i)).

    Each read sums the counters of the selected addresses and thresholds at 0: a sum > 0
    reads +1, a sum <= 0 reads -1 (so an exact tie reads -1, and a query selecting no
    address reads all -1, as in eq. 14).

    Args:
      queries: `[N, D]` in {-1, +1}.
      iterations: Python int >= 1, the number of reads; each is fed back as the next query.

    Returns:
      `[iterations, N, D]` in {-1, +1}, in the dtype of `queries` (float32 for Python
      lists of floats); index i is the (i + 1)-th read.

    Raises:
      ValueError: queries not `[N, D]` in {-1, +1} or D not the memory's; iterations not
        an int >= 1.
    """
    _check_positive_int(iterations, "iterations", "the number of reads, each fed back as "
                        "the next query")
    y = _to_signs(queries, "queries", self.dim, "read")
    dtype = y.dtype
    counters = tf.cast(self.counters, tf.float64)
    reads = []
    for _ in range(iterations):
      sums = tf.linalg.matmul(tf.cast(self._weights(y), tf.float64), counters)  # [N, D]
      y = tf.where(sums > 0., tf.ones([], dtype), -tf.ones([], dtype))         # eq. 14
      reads.append(y)
    return tf.stack(reads, axis=0)
