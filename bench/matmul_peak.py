"""Practical float32 matmul ceiling of this machine, measured with TensorFlow.

Times `tf.linalg.matmul` of square float32 matrices (default 1024 x 1024 and
2048 x 2048) inside a `tf.function`, after warm-up, and reports the median over
repeated calls. A square n x n x n matmul costs 2 n^3 FLOPs (n^3 multiply-adds).

The result is the practical ceiling used by `bench/memory_write.py` to say what
fraction of the machine the batch memory write reaches: import
`measure_matmul_peak` (all sizes) or `matmul_peak_gflops` (the best size).

Run from the repository root:

  python bench/matmul_peak.py [--sizes 1024,2048] [--repeats 10] [--warmup 2]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as kanerva_tf (set before TensorFlow loads)

import tensorflow as tf  # pylint: disable=g-import-not-at-top


def matmul_flops(n):
  """FLOPs of one n x n by n x n matmul: n^3 multiply-adds = 2 n^3."""
  return 2.0 * n ** 3


def _time_calls(fn, args, repeats, warmup):
  """Median and all wall-clock seconds of `repeats` calls of fn(*args), after `warmup` calls."""
  for _ in range(max(warmup, 1)):  # the first call traces; never timed
    fn(*args).numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args).numpy()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def measure_matmul_peak(sizes=(1024, 2048), repeats=10, warmup=2, seed=0):
  """Median float32 matmul throughput per size.

  The tf.function returns a scalar reduction of the product so that fetching the result
  forces the whole matmul while copying only one number back to Python; the reduction
  (n^2 adds) is negligible against the 2 n^3 of the matmul.

  Args:
    sizes: iterable of matrix sizes n (square n x n operands).
    repeats: timed calls per size (the median is reported).
    warmup: untimed calls before timing (at least one, which traces the function).
    seed: seed of the random operands.

  Returns:
    A list of dicts, one per size: {"n", "median_s", "gflops", "times_s"}, with
    gflops = 2 n^3 / median_s / 1e9.
  """

  @tf.function
  def product_sum(a, b):
    return tf.reduce_sum(tf.linalg.matmul(a, b))

  rng = tf.random.Generator.from_seed(seed)
  results = []
  for n in sizes:
    a = rng.normal([n, n], dtype=tf.float32)
    b = rng.normal([n, n], dtype=tf.float32)
    median_s, times = _time_calls(product_sum, (a, b), repeats, warmup)
    results.append({"n": n, "median_s": median_s,
                    "gflops": matmul_flops(n) / median_s / 1e9, "times_s": times})
  return results


def matmul_peak_gflops(sizes=(1024, 2048), repeats=10, warmup=2):
  """The practical ceiling: the best median GFLOP/s over `sizes`; returns (gflops, results)."""
  results = measure_matmul_peak(sizes, repeats, warmup)
  return max(r["gflops"] for r in results), results


def format_results(results):
  """Markdown table of `measure_matmul_peak` results."""
  lines = ["| n | median ms | GFLOP/s |", "|---:|---:|---:|"]
  for r in results:
    lines.append(f"| {r['n']} | {1e3 * r['median_s']:.2f} | {r['gflops']:.1f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="1024,2048",
                      help="comma-separated square matrix sizes n")
  parser.add_argument("--repeats", type=int, default=10, help="timed calls per size")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls per size")
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",") if s]
  peak, results = matmul_peak_gflops(sizes, args.repeats, args.warmup)
  print(f"float32 tf.linalg.matmul in tf.function, TF {tf.__version__}, "
        f"{os.cpu_count()} CPUs, median of {args.repeats} calls")
  print()
  print(format_results(results))
  print()
  print(f"practical peak: {peak:.1f} GFLOP/s")


if __name__ == "__main__":
  main()
