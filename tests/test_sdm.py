"""Tests of kanerva_tf.sdm.SparseDistributedMemory (Appendix B, eqs. 13-14).

Exactness against a loop-by-loop numpy reference of eqs. 13-14, then behaviour from
Kanerva's analysis (recall from noisy queries, iterative reading, finite capacity, selected
fraction = binomial tail). Sizes are chosen so the behaviour holds with margin for the fixed
seeds (the margins are stated at each test); the whole file runs in a few seconds on one core.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import kanerva_tf
from kanerva_tf.sdm import SparseDistributedMemory


# ------------------------------------------------------------------ numpy reference
def _np_hamming(a, b):
  return int(np.sum(a != b))


def _np_selected(hard, y, radius):
  """Indices k with h(y, A_k) <= radius (eq. 13), by counting differing components."""
  return [k for k in range(hard.shape[0]) if _np_hamming(hard[k], y) <= radius]


def _np_write(hard, counters, patterns, addresses, radius):
  counters = counters.copy()
  for x, y in zip(patterns, addresses):
    for k in _np_selected(hard, y, radius):
      counters[k] += x.astype(np.int64)
  return counters


def _np_read(hard, counters, queries, radius, iterations):
  """Returns (reads [iterations, N, D], sums [iterations, N, D]) of eq. 14 iterated."""
  reads, sums = [], []
  y = np.array(queries, np.int64)
  for _ in range(iterations):
    s = np.zeros_like(y)
    for n in range(y.shape[0]):
      for k in _np_selected(hard, y[n], radius):
        s[n] += counters[k]
    y = np.where(s > 0, 1, -1)
    reads.append(y)
    sums.append(s)
  return np.stack(reads), np.stack(sums)


def _signs(rng, shape):
  return rng.choice(np.array([-1., 1.], np.float32), size=shape)


def _flip(rng, x, fraction):
  """Flips exactly round(fraction * D) randomly chosen components of every row."""
  n = int(round(fraction * x.shape[1]))
  out = x.copy()
  for row in out:
    row[rng.choice(x.shape[1], n, replace=False)] *= -1
  return out


def _bit_error(reads, targets):
  """Fraction of components differing from the targets, per iteration: [iterations]."""
  return np.mean(np.asarray(reads) != targets[np.newaxis], axis=(1, 2))


# ------------------------------------------------------------------ against the reference
def test_random_addresses_are_signs_deterministic_and_balanced():
  sdm = SparseDistributedMemory.random(num_addresses=500, dim=64, radius=28, seed=3)
  a = sdm.addresses.numpy()
  assert a.shape == (500, 64) and sdm.num_addresses == 500 and sdm.dim == 64
  assert set(np.unique(a)) == {-1., 1.}
  # Mean of 32,000 fair signs: sd 0.0056.
  assert abs(a.mean()) < 0.03
  assert np.array_equal(a, SparseDistributedMemory.random(500, 64, 28, seed=3).addresses)
  assert np.array_equal(a, SparseDistributedMemory.random(500, 64, 28, seed=(0, 3)).addresses)
  assert not np.array_equal(a, SparseDistributedMemory.random(500, 64, 28, seed=4).addresses)
  assert not np.any(sdm.counters.numpy())


def test_hamming_distance_and_weights_match_reference():
  rng = np.random.default_rng(0)
  sdm = SparseDistributedMemory.random(num_addresses=200, dim=40, radius=16, seed=1)
  hard = sdm.addresses.numpy()
  y = _signs(rng, (30, 40))
  h = sdm.hamming_distance(y).numpy()
  expected = np.array([[_np_hamming(hard[k], y[n]) for k in range(200)] for n in range(30)])
  np.testing.assert_array_equal(h, expected)
  w = sdm.weights(y).numpy()
  assert set(np.unique(w)) <= {0., 1.}
  np.testing.assert_array_equal(w, (expected <= 16).astype(np.float32))
  assert 0 < w.sum() < w.size   # some but not all selected: the comparison is informative


@pytest.mark.parametrize("hetero", [False, True], ids=["auto", "hetero"])
def test_write_and_iterative_read_match_reference(hetero):
  rng = np.random.default_rng(1 + hetero)
  k, d, radius, n = 300, 32, 12, 40
  sdm = SparseDistributedMemory.random(num_addresses=k, dim=d, radius=radius, seed=5)
  hard = sdm.addresses.numpy()
  x = _signs(rng, (n, d))
  y = _signs(rng, (n, d)) if hetero else x
  written = sdm.write(x, addresses=y if hetero else None)
  expected = _np_write(hard, np.zeros((k, d), np.int64), x, y, radius)
  np.testing.assert_array_equal(written.counters.numpy(), expected)
  queries = _flip(rng, y, 0.1)
  reads = written.read(queries, iterations=4)
  ref_reads, ref_sums = _np_read(hard, expected, queries, radius, 4)
  assert reads.shape == (4, n, d)
  np.testing.assert_array_equal(reads.numpy(), ref_reads)
  # The reference met exact ties (sum 0 -> -1), so the tie rule was compared too.
  assert np.any(ref_sums == 0)


def test_writing_in_parts_or_one_by_one_equals_one_write():
  rng = np.random.default_rng(2)
  sdm = SparseDistributedMemory.random(num_addresses=400, dim=48, radius=20, seed=0)
  x = _signs(rng, (30, 48))
  once = sdm.write(x).counters.numpy()
  parts = sdm.write(x[:7]).write(x[7:]).counters.numpy()
  one_by_one = sdm
  for i in reversed(range(30)):
    one_by_one = one_by_one.write(x[i:i + 1])
  assert np.any(once)
  np.testing.assert_array_equal(parts, once)
  np.testing.assert_array_equal(one_by_one.counters.numpy(), once)


def test_write_returns_a_new_memory_and_leaves_this_one_unchanged():
  rng = np.random.default_rng(3)
  sdm = SparseDistributedMemory.random(num_addresses=100, dim=16, radius=6, seed=0)
  written = sdm.write(_signs(rng, (5, 16)))
  assert np.any(written.counters.numpy())
  assert not np.any(sdm.counters.numpy())
  assert written.addresses is sdm.addresses and written.radius == sdm.radius
  with pytest.raises(AttributeError):
    sdm.radius = 3
  with pytest.raises(AttributeError):
    sdm.counters = written.counters


def test_crosses_tf_function_boundary():
  rng = np.random.default_rng(4)
  sdm = SparseDistributedMemory.random(num_addresses=300, dim=32, radius=12, seed=2)
  x = tf.constant(_signs(rng, (10, 32)))

  @tf.function
  def write_and_read(memory, patterns):
    memory = memory.write(patterns)
    return memory, memory.read(patterns, iterations=2)

  memory, reads = write_and_read(sdm, x)
  assert isinstance(memory, SparseDistributedMemory) and memory.radius == 12
  eager = sdm.write(x)
  np.testing.assert_array_equal(memory.counters.numpy(), eager.counters.numpy())
  np.testing.assert_array_equal(reads.numpy(), eager.read(x, iterations=2).numpy())
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"\{-1, \+1\}"):
    write_and_read(sdm, tf.zeros([10, 32]))   # values checked at run time in a graph


def test_read_keeps_the_queries_dtype():
  rng = np.random.default_rng(5)
  sdm = SparseDistributedMemory.random(num_addresses=100, dim=16, radius=6, seed=0)
  x = _signs(rng, (4, 16))
  sdm = sdm.write(x)
  for dtype in (tf.int8, tf.int32, tf.float64):
    reads = sdm.read(tf.constant(x, dtype))
    assert reads.dtype == dtype and reads.shape == (1, 4, 16)
    assert set(np.unique(reads.numpy())) <= {-1, 1}


# ------------------------------------------------------------------ ties and empty selections
def test_sum_exactly_zero_reads_minus_one():
  addresses = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]], np.float32)
  counters = np.array([[1, -1, 0, 2], [-1, 1, 0, 1]], np.int32)
  sdm = SparseDistributedMemory(addresses, radius=4, counters=counters)  # selects both
  read = sdm.read([[1., -1., 1., -1.]]).numpy()
  # Sums [0, 0, 0, 3]: the three ties read -1 (eq. 14: "> 0" else -1), the last +1.
  np.testing.assert_array_equal(read, [[[-1, -1, -1, 1]]])


def test_tie_from_writes_reads_minus_one():
  rng = np.random.default_rng(6)
  sdm = SparseDistributedMemory.random(num_addresses=500, dim=64, radius=28, seed=1)
  key = _signs(rng, (1, 64))
  data = _signs(rng, (1, 64))
  cancelled = sdm.write(data, addresses=key).write(-data, addresses=key)
  assert sdm.weights(key).numpy().sum() > 0
  assert not np.any(cancelled.counters.numpy())
  np.testing.assert_array_equal(cancelled.read(key)[0], -np.ones((1, 64)))
  majority = cancelled.write(data, addresses=key)
  np.testing.assert_array_equal(majority.read(key)[0], data)


def test_no_selected_address_reads_all_minus_one():
  rng = np.random.default_rng(7)
  sdm = SparseDistributedMemory.random(num_addresses=50, dim=64, radius=0, seed=2)
  hard = sdm.addresses.numpy()
  # Radius 0 selects only an exact match: write at a hard address, so the memory is not empty.
  sdm = sdm.write(_signs(rng, (1, 64)), addresses=hard[:1])
  assert np.any(sdm.counters.numpy())
  query = _signs(rng, (3, 64))
  assert not np.any(sdm.weights(query).numpy())      # no address within distance 0
  np.testing.assert_array_equal(sdm.read(query, iterations=2), -np.ones((2, 3, 64)))


# ------------------------------------------------------------------ Kanerva's analysis
def test_few_patterns_recalled_exactly_from_ten_percent_noise():
  # K=2000, D=256, radius 112: ~52 addresses selected; a query 26 bits away shares 44 % of
  # them with its pattern (signal ~23 per bit, binomial calculation) against a sum whose
  # sd is ~5 (cross-talk of the 4 other patterns and the spread of the shared count).
  # Measured: the smallest of the 1280 sums, times the stored bit, is +6.
  rng = np.random.default_rng(8)
  sdm = SparseDistributedMemory.random(num_addresses=2000, dim=256, radius=112, seed=0)
  x = _signs(rng, (5, 256))
  sdm = sdm.write(x)
  noisy = _flip(rng, x, 0.1)
  assert _bit_error(noisy[np.newaxis], x)[0] == pytest.approx(0.1, abs=0.002)
  reads = sdm.read(noisy, iterations=1).numpy()
  np.testing.assert_array_equal(reads[0], x)


def test_heteroassociative_sequence_is_followed_by_iterative_reading():
  rng = np.random.default_rng(9)
  sdm = SparseDistributedMemory.random(num_addresses=2000, dim=256, radius=112, seed=1)
  chain = _signs(rng, (5, 256))                           # x0 -> x1 -> x2 -> x3 -> x4
  sdm = sdm.write(chain[1:], addresses=chain[:-1])
  reads = sdm.read(_flip(rng, chain[:1], 0.1), iterations=4).numpy()
  np.testing.assert_array_equal(reads[:, 0], chain[1:])


def test_iterative_reading_reduces_the_error():
  # K=10000, 30 patterns, 20 % noise: the first read is still ~4 % wrong but nearer the
  # stored pattern than the query, so reading again converges to it (measured with seeds
  # 0-3: 4.4-5.7 % after one read, <= 0.01 % after five).
  rng = np.random.default_rng(10)
  sdm = SparseDistributedMemory.random(num_addresses=10000, dim=256, radius=112, seed=0)
  x = _signs(rng, (30, 256))
  sdm = sdm.write(x)
  err = _bit_error(sdm.read(_flip(rng, x, 0.2), iterations=5), x)
  assert 0.02 < err[0] < 0.2            # the first read is not yet exact
  assert err[1] < 0.25 * err[0]
  assert np.all(np.diff(err) <= 0)
  assert err[-1] < 0.001


def test_capacity_is_finite():
  # The same 10 queries (10 % noise) after ever more patterns are stored (the memory
  # written in increments, which equals writing all at once). Measured with these seeds:
  # 0, 0.052, 0.166, 0.253.
  rng = np.random.default_rng(11)
  sdm = SparseDistributedMemory.random(num_addresses=2000, dim=256, radius=112, seed=2)
  x = _signs(rng, (1000, 256))
  queries = _flip(rng, x[:10], 0.1)
  errors, stored = [], 0
  for load in (10, 50, 200, 1000):
    sdm = sdm.write(x[stored:load])
    stored = load
    errors.append(_bit_error(sdm.read(queries), x[:10])[0])
  assert errors[0] == 0.
  assert np.all(np.diff(errors) > 0)
  assert errors[-1] > 0.15


@pytest.mark.parametrize("radius", [100, 112, 120, 128])
def test_selected_fraction_is_the_binomial_tail(radius):
  # Random inputs and random addresses: w_nk ~ Bernoulli(p), p = P(Binomial(D, 1/2) <= r),
  # pairwise independent over (n, k), so the mean of N K of them has sd sqrt(p (1-p) / (N K)).
  # Tolerance: 5 of those sd.
  k, d, n = 2000, 256, 200
  p = sum(math.comb(d, i) for i in range(radius + 1)) / 2 ** d
  sdm = SparseDistributedMemory.random(num_addresses=k, dim=d, radius=radius, seed=radius)
  y = _signs(np.random.default_rng(radius), (n, d))
  fraction = float(tf.reduce_mean(sdm.weights(y)))
  assert fraction == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / (n * k)))


# ------------------------------------------------------------------ errors
def test_exported_from_package():
  assert kanerva_tf.SparseDistributedMemory is SparseDistributedMemory
  assert "SparseDistributedMemory" in kanerva_tf.__all__


@pytest.fixture(name="sdm")
def _sdm():
  return SparseDistributedMemory.random(num_addresses=20, dim=8, radius=3, seed=0)


@pytest.mark.parametrize("bad, message", [
    (np.zeros([2, 8]), r"2 \* b - 1"),                       # bits {0, 1}
    (np.full([2, 8], 0.5), r"entries outside \{-1, \+1\}"),
    (np.ones([2, 8], bool), r"dtype bool"),
    (np.ones([2, 8], np.uint8), r"signed real dtype"),
    (np.ones([8]), r"\[N, D=8\].*got shape \(8,\)"),
    (np.ones([1, 2, 8]), r"\[N, D=8\].*got shape \(1, 2, 8\)"),
    (np.ones([2, 9]), r"dimension D=8; got shape \(2, 9\)"),
])
def test_bad_inputs_are_refused(sdm, bad, message):
  with pytest.raises(ValueError, match=message):
    sdm.write(bad)
  with pytest.raises(ValueError, match=message):
    sdm.write(np.ones([2, 8]), addresses=bad)
  with pytest.raises(ValueError, match=message):
    sdm.read(bad)
  with pytest.raises(ValueError, match=message):
    sdm.weights(bad)


def test_mismatched_n_is_refused(sdm):
  with pytest.raises(ValueError, match=r"same N.*\(3, 8\) and \(2, 8\)"):
    sdm.write(np.ones([3, 8]), addresses=np.ones([2, 8]))


@pytest.mark.parametrize("iterations", [0, -1, 1.5, True, None, "3"])
def test_bad_iterations_are_refused(sdm, iterations):
  with pytest.raises(ValueError, match=r"iterations must be an int >= 1"):
    sdm.read(np.ones([1, 8]), iterations=iterations)


@pytest.mark.parametrize("radius", [-1, 9, 1.5, True, "3", None])
def test_bad_radius_is_refused(radius):
  with pytest.raises(ValueError, match=r"radius must be an int with 0 <= radius <= D=8"):
    SparseDistributedMemory.random(num_addresses=20, dim=8, radius=radius, seed=0)
  with pytest.raises(ValueError, match=r"radius must be an int"):
    SparseDistributedMemory(np.ones([20, 8]), radius=radius)


@pytest.mark.parametrize("name, kwargs", [
    ("num_addresses", dict(num_addresses=0)), ("num_addresses", dict(num_addresses=2.0)),
    ("num_addresses", dict(num_addresses=True)), ("dim", dict(dim=0)),
    ("dim", dict(dim=-8)), ("dim", dict(dim=np.float32(8))),
])
def test_bad_sizes_are_refused(name, kwargs):
  args = dict(num_addresses=20, dim=8, radius=3, seed=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=rf"{name} must be an int >= 1"):
    SparseDistributedMemory.random(**args)


@pytest.mark.parametrize("seed", [None, 1.5, (1, 2, 3), "0"])
def test_bad_seed_is_refused(seed):
  with pytest.raises(ValueError, match=r"seed must be an int or a stateless seed"):
    SparseDistributedMemory.random(num_addresses=20, dim=8, radius=3, seed=seed)


def test_bad_constructor_arguments_are_refused():
  with pytest.raises(ValueError, match=r"addresses must be \[K, D=8\] with entries"):
    SparseDistributedMemory(np.zeros([20, 8]), radius=3)
  with pytest.raises(ValueError, match=r"addresses must be \[K, D\]"):
    SparseDistributedMemory(np.ones([8]), radius=3)
  with pytest.raises(ValueError, match=r"counters must be integers \[K, D\]"):
    SparseDistributedMemory(np.ones([20, 8]), radius=3, counters=np.zeros([20, 7], np.int32))
  with pytest.raises(ValueError, match=r"counters must be integers.*float32"):
    SparseDistributedMemory(np.ones([20, 8]), radius=3, counters=np.zeros([20, 8], np.float32))


# ------------------------------------------------------------------ bench/sdm_recall.py
def test_bench_sdm_recall_smoke(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "sdm_recall.py"
  spec = importlib.util.spec_from_file_location("sdm_recall", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  bench.main(["--num_addresses", "300", "--dim", "64", "--radius", "26", "--loads", "5,40",
              "--noise", "0,0.25", "--iterations", "2", "--queries", "8", "--threads", "0",
              "--out_dir", str(tmp_path)])
  results = json.loads((tmp_path / "sdm_recall.json").read_text())
  assert (tmp_path / "sdm_recall.png").stat().st_size > 0
  table = (tmp_path / "sdm_recall.md").read_text()
  assert "python bench/sdm_recall.py --num_addresses 300" in table and "| 40 |" in table
  assert [(r["stored"], r["noise"], r["queries"]) for r in results["rows"]] == [
      (5, 0., 5), (5, 0.25, 5), (40, 0., 8), (40, 0.25, 8)]
  for r in results["rows"]:
    assert len(r["error"]) == 3 and r["error"][0] == 16 / 64 * (r["noise"] > 0)
  p = sum(math.comb(64, i) for i in range(27)) / 2 ** 64
  assert results["selected_fraction_expected"] == pytest.approx(p)
