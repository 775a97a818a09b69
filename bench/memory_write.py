"""Benchmark of the Kanerva memory write (`KanervaMemory.update`) on this machine.

Writes one episode batch -- B episodes of T observations into a K x C memory -- with the
three write strategies of `kanerva_tf.memory`, each wrapped in a `tf.function`, with and
without XLA (`jit_compile=True`):

  batch    update(method="batch"):  one T x T Cholesky + one triangular solve.
  online   update(method="online", chunk_size=1): tf.foldl over T one-observation writes.
  chunked  update(method="online", chunk_size=--chunk_size, default 8): tf.foldl over
           T / chunk_size batch writes of chunk_size observations.

Timing: every (T, K) cell builds its 6 functions, calls each `--warmup` times untimed (the
first call traces and, with jit, compiles; its time is reported separately as
"first call"), then runs interleaved rounds -- one call of every function per round -- so
slow drifts of the machine's load hit all methods alike and the ratios within one (T, K)
are fair. Each timed call fetches a scalar reduction of the posterior (sum of R' plus sum
of U') with `.numpy()`, so the whole write is really executed. The median over the rounds
is reported. A function whose timed calls have used more than `--cell_budget_s` seconds
stops after at least `--min_repeats` calls (marked "capped" in the table).

FLOP count of one batch write (`_write` in kanerva_tf/memory.py), per episode, with
Sigma_z = L L^T, and counting a multiply-add as 2 FLOPs:

  W R                 [T,K] x [K,C]          2 T K C
  Sigma_c = W U       [T,K] x [K,K]          2 T K^2
  Sigma_c W^T         [T,K] x [K,T]          2 T^2 K
  Cholesky of Sigma_z T x T                  T^3 / 3
  L^{-1} [Sigma_c|D]  T x T tri. solve,      T^2 (K + C)
                      T x (K+C) right side
  B^T E               [K,T] x [T,C]          2 T K C
  B^T B               [K,T] x [T,K]          2 T K^2
  ----------------------------------------------------------------
  total  F(T) = 4 T K C + 4 T K^2 + 2 T^2 K + T^3/3 + T^2 (K + C),  times B episodes.

The element-wise work (Delta = Z - W R, the diagonal of Sigma_xi, the symmetrisations,
R + ..., U - ...) is O(T^2 + T C + K^2 + K C) and not counted. The on-line writes carry a
square root L of U (`_write_sqrt`, once per chunk of n observations):

  W R, L^T W^T, L Phi, Phi^T Phi          2 n K C + 4 n K^2 + 2 n^2 K
  Cholesky of Sigma_z, three n x n solves n^3 / 3 + 2 n^2 (K + C)
  R' and L' updates                       2 n K C + 2 n K^2
  total  G(n) = 4 n K C + 6 n K^2 + 2 n^2 K + n^3/3 + 2 n^2 (K + C)

plus, once per write, the Cholesky factor of U and U' = L L^T (K^3/3 + 2 K^3). Their count
is the sum of G(chunk) over the chunks plus that, e.g. T G(1) + 7 K^3/3 for chunk_size 1:
they do fewer FLOPs than the batch write when T is large (no T^2 and T^3 terms) but in many
small, sequential operations. (Tables measured before the square-root form, whose on-line
rule was `_write` once per chunk, counted the sum of F(chunk).) GFLOP/s of every method
is its own count divided by its median time; "% peak" compares it with the float32
matmul ceiling measured by `bench/matmul_peak.py` in the same run (best median over
1024^2 and 2048^2 matmuls, measured before the grid and after every T).

Run from the repository root:

  python bench/memory_write.py                 # full grid (about 10 minutes on 2 cores)
  python bench/memory_write.py --quick         # tiny grid, smoke test (< 1 minute)
  python bench/memory_write.py --t 32,128 --k 64 --repeats 30 --no_jit
"""

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as kanerva_tf (set before TensorFlow loads)

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
tf.get_logger().setLevel("ERROR")  # every cell builds new tf.functions on purpose: no retracing warnings
import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matmul_peak  # pylint: disable=g-import-not-at-top,wrong-import-position

from kanerva_tf.memory import KanervaMemory  # pylint: disable=g-import-not-at-top

METHODS = ("batch", "online", "chunked")


# ------------------------------------------------------------------ FLOP counts
def write_flops(t, k, c):
  """FLOPs of one batch write of t observations into one K x C memory (see module doc)."""
  return (4 * t * k * c + 4 * t * k * k + 2 * t * t * k + t ** 3 / 3.0
          + t * t * (k + c))


def sqrt_write_flops(n, k, c):
  """FLOPs of one square-root on-line step of n observations (`_write_sqrt`, module doc)."""
  return (4 * n * k * c + 6 * n * k * k + 2 * n * n * k + n ** 3 / 3.0
          + 2 * n * n * (k + c))


def method_flops(method, t, k, c, b, chunk_size):
  """FLOPs of `method` writing B episodes of T observations: sum of per-chunk counts."""
  if method == "batch":
    return b * write_flops(t, k, c)
  size = 1 if method == "online" else chunk_size
  num_full, rest = divmod(t, size)
  chunks = [size] * num_full + ([rest] if rest else [])
  return b * (sum(sqrt_write_flops(n, k, c) for n in chunks) + 7 * k ** 3 / 3.0)


# ------------------------------------------------------------------ machine info
def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def num_cpus():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count()


def load_average():
  try:
    return "%.2f %.2f %.2f" % os.getloadavg()
  except OSError:
    return "n/a"


# ------------------------------------------------------------------ the benchmark
def make_write_fn(method, chunk_size, noise_variance, jit):
  """A tf.function writing (w, z) into the prior (loc, u) and returning a scalar checksum."""
  kwargs = {"method": "batch"}
  if method == "online":
    kwargs = {"method": "online", "chunk_size": 1}
  elif method == "chunked":
    kwargs = {"method": "online", "chunk_size": chunk_size}

  def write(loc, u, w, z):
    posterior = KanervaMemory(loc, u).update(w, z, noise_variance=noise_variance, **kwargs)
    return tf.reduce_sum(posterior.loc) + tf.reduce_sum(posterior.row_covariance)

  return tf.function(write, jit_compile=jit)


def make_inputs(t, k, c, b, seed):
  """Prior (random R, U = I, shared by the batch as in the model) and an episode batch."""
  rng = np.random.default_rng(seed)
  loc = tf.constant(rng.normal(size=(k, c)).astype(np.float32))
  u = tf.eye(k, dtype=tf.float32)
  w = tf.constant((rng.normal(size=(b, t, k)) / np.sqrt(k)).astype(np.float32))
  z = tf.constant(rng.normal(size=(b, t, c)).astype(np.float32))
  return loc, u, w, z


def bench_cell(t, k, args, jits):
  """Times every (method, jit) function for one (T, K); returns a list of row dicts."""
  inputs = make_inputs(t, k, args.c, args.b, args.seed)
  rows = []
  for method in args.methods:
    for jit in jits:
      fn = make_write_fn(method, min(args.chunk_size, t), args.noise_variance, jit)
      start = time.perf_counter()
      checksum = float(fn(*inputs).numpy())  # trace (+ XLA compile) + first run
      first_s = time.perf_counter() - start
      warm_s = first_s
      for _ in range(args.warmup - 1):
        if warm_s > args.cell_budget_s:  # slow cell: one untimed call is enough
          break
        start = time.perf_counter()
        fn(*inputs).numpy()
        warm_s += time.perf_counter() - start
      rows.append({"t": t, "k": k, "method": method, "jit": jit, "fn": fn,
                   "first_s": first_s, "checksum": checksum, "times": [],
                   "capped": False})
  for _ in range(args.repeats):
    active = [r for r in rows if not r["capped"]]
    if not active:
      break
    for r in active:
      start = time.perf_counter()
      r["fn"](*inputs).numpy()
      r["times"].append(time.perf_counter() - start)
      if (len(r["times"]) >= args.min_repeats and len(r["times"]) < args.repeats
          and sum(r["times"]) > args.cell_budget_s):
        r["capped"] = True
  for r in rows:
    del r["fn"]
    r["median_s"] = statistics.median(r["times"])
    r["flops"] = method_flops(r["method"], t, k, args.c, args.b, min(args.chunk_size, t))
  return rows


# ------------------------------------------------------------------ output
def header(args, argv):
  command = shlex.join(["python", "bench/memory_write.py"] + list(argv))
  lines = [
      "# Kanerva memory write benchmark",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
      f"- command: `{command}` (interpreter {sys.executable}, cwd {os.getcwd()})",
      f"- machine: nproc = {num_cpus()}, CPU model: {cpu_model()}, "
      f"{platform.system()} {platform.release()}",
      f"- software: Python {platform.python_version()}, TensorFlow {tf.__version__}, "
      f"TFP {tfp.__version__}, NumPy {np.__version__}; default TF thread pools",
      f"- load average at start (1/5/15 min): {load_average()}",
      f"- grid: T in {args.t}, K in {args.k}, C = {args.c}, batch B = {args.b}, "
      f"noise_variance = {args.noise_variance}, chunked = online with chunk_size "
      f"{args.chunk_size} (capped at T)",
      f"- timing: {args.warmup} untimed warm-up call(s) per function (compile excluded; only 1 "
      f"if the first call takes > {args.cell_budget_s:g} s), then "
      f"up to {args.repeats} interleaved timed calls; median reported; a function stops "
      f"early (\"capped\") once its timed calls exceed {args.cell_budget_s:g} s and it has "
      f">= {args.min_repeats} calls",
      "- FLOPs per batch write and episode: 4TKC + 4TK^2 + 2T^2K + T^3/3 + T^2(K+C), "
      "times B; on-line methods: sum over their chunks (see the module docstring)",
  ]
  return "\n".join(lines)


def results_table(rows, peak):
  lines = ["| T | K | method | jit | median ms | calls | first call s | GFLOP | GFLOP/s "
           "| % peak |",
           "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    gflops = r["flops"] / r["median_s"] / 1e9
    calls = f"{len(r['times'])}" + (" capped" if r["capped"] else "")
    lines.append(
        f"| {r['t']} | {r['k']} | {r['method']} | {'yes' if r['jit'] else 'no'} "
        f"| {1e3 * r['median_s']:.2f} | {calls} | {r['first_s']:.2f} "
        f"| {r['flops'] / 1e9:.4f} | {gflops:.2f} | {100 * gflops / peak:.1f} |")
  return "\n".join(lines)


def ratio_table(rows, jits, methods):
  index = {(r["t"], r["k"], r["method"], r["jit"]): r for r in rows}
  cells = sorted({(r["t"], r["k"]) for r in rows})
  others = [m for m in methods if m != "batch"]
  cols, seps = [], []
  if "batch" in methods:
    for jit in jits:
      for m in others:
        cols.append(f"{m}/batch ({'jit' if jit else 'no jit'})")
  for m in methods:
    if len(jits) == 2:
      cols.append(f"{m}: no jit / jit")
  cols.append("max rel. checksum diff")
  seps = ["---:"] * len(cols)
  lines = ["| T | K | " + " | ".join(cols) + " |", "|---:|---:|" + "|".join(seps) + "|"]
  for t, k in cells:
    vals = []
    if "batch" in methods:
      for jit in jits:
        for m in others:
          vals.append(f"{index[t, k, m, jit]['median_s'] / index[t, k, 'batch', jit]['median_s']:.2f}")
    for m in methods:
      if len(jits) == 2:
        vals.append(f"{index[t, k, m, False]['median_s'] / index[t, k, m, True]['median_s']:.2f}")
    sums = [index[t, k, m, j]["checksum"] for m in methods for j in jits]
    ref = sums[0]
    vals.append(f"{max(abs(s - ref) for s in sums) / max(abs(ref), 1e-30):.1e}")
    lines.append(f"| {t} | {k} | " + " | ".join(vals) + " |")
  return "\n".join(lines)


def parse_ints(s):
  return [int(x) for x in s.split(",") if x]


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description="Benchmark the Kanerva memory write (batch / online / chunked, "
                  "with and without XLA).")
  parser.add_argument("--quick", action="store_true",
                      help="tiny grid for a smoke test (< 1 minute): T 8,32, K 64, "
                           "3 repeats, 1 warm-up, small matmul peak")
  parser.add_argument("--t", type=parse_ints, default=None,
                      help="comma-separated episode lengths T (default 8,32,128,512)")
  parser.add_argument("--k", type=parse_ints, default=None,
                      help="comma-separated memory sizes K (default 64,128,256)")
  parser.add_argument("--c", type=int, default=100, help="code size C")
  parser.add_argument("--b", type=int, default=16, help="batch size B (episodes)")
  parser.add_argument("--chunk_size", type=int, default=8, help="chunk size of 'chunked'")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help="comma-separated subset of " + ",".join(METHODS))
  parser.add_argument("--no_jit", action="store_true", help="only without jit_compile")
  parser.add_argument("--jit_only", action="store_true", help="only with jit_compile=True")
  parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 15)")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed calls per function, the first one compiles (default 2)")
  parser.add_argument("--min_repeats", type=int, default=3,
                      help="calls a capped function still gets")
  parser.add_argument("--cell_budget_s", type=float, default=3.0,
                      help="timed seconds after which a function stops (>= min_repeats)")
  parser.add_argument("--noise_variance", type=float, default=1.0)
  parser.add_argument("--peak_sizes", type=parse_ints, default=None,
                      help="matmul sizes of the peak measurement (default 1024,2048)")
  parser.add_argument("--peak_repeats", type=int, default=None,
                      help="timed calls per matmul size (default 10)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  quick = args.quick
  args.t = args.t or ([8, 32] if quick else [8, 32, 128, 512])
  args.k = args.k or ([64] if quick else [64, 128, 256])
  args.repeats = args.repeats or (3 if quick else 15)
  args.warmup = args.warmup or (1 if quick else 2)
  args.min_repeats = min(args.min_repeats, args.repeats)
  args.peak_sizes = args.peak_sizes or ([512] if quick else [1024, 2048])
  args.peak_repeats = args.peak_repeats or (3 if quick else 10)
  args.methods = [m for m in args.methods.split(",") if m]
  for m in args.methods:
    if m not in METHODS:
      parser.error(f"unknown method {m!r}; choose from {METHODS}")
  if args.no_jit and args.jit_only:
    parser.error("--no_jit and --jit_only exclude each other")
  return args


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  jits = [False] if args.no_jit else [True] if args.jit_only else [False, True]
  wall_start = time.perf_counter()
  print(header(args, argv), flush=True)

  # The machine is shared and its load drifts: measure the matmul ceiling before the grid,
  # after every T and at the end, and use the best median as the practical peak.
  peaks = [("before the grid", matmul_peak.measure_matmul_peak(
      args.peak_sizes, args.peak_repeats, warmup=2))]
  rows = []
  for t in args.t:
    for k in args.k:
      cell_start = time.perf_counter()
      rows.extend(bench_cell(t, k, args, jits))
      print(f"[progress] T={t} K={k} done in {time.perf_counter() - cell_start:.1f} s",
            file=sys.stderr, flush=True)
    peaks.append((f"after T={t}", matmul_peak.measure_matmul_peak(
        args.peak_sizes, args.peak_repeats, warmup=2)))
  peak = max(r["gflops"] for _, res in peaks for r in res)

  print()
  print("## float32 matmul ceiling (bench/matmul_peak.py)")
  print()
  print(f"Median GFLOP/s of {args.peak_repeats} calls of an n x n x n tf.linalg.matmul in a "
        "tf.function, measured several times during the run:")
  print()
  sizes = [r["n"] for r in peaks[0][1]]
  print("| when | " + " | ".join(f"n={n}" for n in sizes) + " |")
  print("|---|" + "---:|" * len(sizes))
  for when, res in peaks:
    print(f"| {when} | " + " | ".join(f"{r['gflops']:.1f}" for r in res) + " |")
  print()
  print(f"Practical peak used below: {peak:.1f} GFLOP/s (best of the medians above).")
  print()
  print("## Write times")
  print()
  print(results_table(rows, peak))
  print()
  print("## Ratios of median times (same run, same (T, K))")
  print()
  print("x/batch > 1: x is slower than the batch write; no jit / jit > 1: XLA is faster. "
        "The last column compares the checksums (sum R' + sum U') of all 6 functions.")
  print()
  print(ratio_table(rows, jits, args.methods))
  print()
  print(f"- load average at end (1/5/15 min): {load_average()}")
  print(f"- total wall time: {time.perf_counter() - wall_start:.0f} s")
  capped = [r for r in rows if r["capped"]]
  if capped:
    print(f"- {len(capped)} function(s) capped before {args.repeats} calls (slow cells): "
          + ", ".join(f"T={r['t']} K={r['k']} {r['method']} "
                      f"{'jit' if r['jit'] else 'no jit'} ({len(r['times'])})"
                      for r in capped))


if __name__ == "__main__":
  main()
