"""Recall of Kanerva's sparse distributed memory (`kanerva_tf.SparseDistributedMemory`).

Stores P random patterns in {-1, +1}^D (autoassociative, written in increments: the memory
after P_1 patterns is written on to P_2, ..., which equals writing them all at once), then
reads the first --queries stored patterns back from noisy queries -- a fixed fraction of
their D components flipped, at random positions -- with iterative reading (each read fed
back as the next query, eq. 14 iterated). Recall error = fraction of components of the read
that differ from the stored pattern; "exact" = fraction of queries read back without error.
Iteration 0 is the query itself (its error is the noise fraction).

Outputs in --out_dir (default results/sdm/): sdm_recall.png (error vs number of stored
patterns, after one read and after the last; error vs iterations for each noise level),
sdm_recall.json (every number) and sdm_recall.md (the tables, the date, the command).

Run from the repository root (about a minute on one core with the defaults):

  python bench/sdm_recall.py
  python bench/sdm_recall.py --loads 10,100,1000 --noise 0.1 --iterations 5 --out_dir /tmp/sdm
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as kanerva_tf (set before TensorFlow loads)

import matplotlib  # pylint: disable=g-import-not-at-top
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import matplotlib.ticker  # pylint: disable=g-import-not-at-top,unused-import
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from kanerva_tf.sdm import SparseDistributedMemory  # pylint: disable=g-import-not-at-top


def _ints(text):
  return [int(v) for v in text.split(",")]


def _floats(text):
  return [float(v) for v in text.split(",")]


def define_flags(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_addresses", type=int, default=10000, help="K hard addresses")
  parser.add_argument("--dim", type=int, default=256, help="D pattern dimension")
  parser.add_argument("--radius", type=int, default=112, help="selection radius (eq. 13)")
  parser.add_argument("--loads", type=_ints, default=_ints("10,20,30,50,70,100,150,200,300,500,1000,2000"),
                      help="numbers of stored patterns, increasing, comma separated")
  parser.add_argument("--noise", type=_floats, default=_floats("0,0.1,0.2,0.3"),
                      help="fractions of the query's components flipped, comma separated")
  parser.add_argument("--iterations", type=int, default=10, help="reads per query")
  parser.add_argument("--queries", type=int, default=200,
                      help="stored patterns read back per load (all of them if fewer)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=1,
                      help="TensorFlow intra-op threads (0: TensorFlow's default)")
  parser.add_argument("--out_dir", default=os.path.join("results", "sdm"))
  args = parser.parse_args(argv)
  if args.loads != sorted(set(args.loads)) or args.loads[0] < 1:
    parser.error(f"--loads must be increasing positive ints; got {args.loads}")
  if any(not 0. <= f <= 1. for f in args.noise):
    parser.error(f"--noise fractions must be in [0, 1]; got {args.noise}")
  return args


def flip(rng, x, fraction):
  """Flips exactly round(fraction * D) components of every row of x `[N, D]`."""
  n, d = x.shape
  num = int(round(fraction * d))
  cols = np.argsort(rng.random((n, d)), axis=1)[:, :num]
  signs = np.ones_like(x)
  np.put_along_axis(signs, cols, -1., axis=1)
  return x * signs


def binomial_tail(d, radius):
  """P(Binomial(d, 1/2) <= radius): the expected fraction of addresses selected."""
  return sum(math.comb(d, i) for i in range(radius + 1)) / 2 ** d


def run(args):
  """Returns the results as a JSON-able dict."""
  rng = np.random.default_rng(args.seed)
  sdm = SparseDistributedMemory.random(args.num_addresses, args.dim, args.radius,
                                       seed=(args.seed, 1))
  patterns = rng.choice(np.array([-1., 1.], np.float32), size=(args.loads[-1], args.dim))
  # One noisy copy per noise level of the patterns queried at every load.
  num_queries = min(args.queries, args.loads[-1])
  queries = {f: flip(rng, patterns[:num_queries], f) for f in args.noise}
  probe = rng.choice(np.array([-1., 1.], np.float32), size=(200, args.dim))
  selected = float(tf.reduce_mean(sdm.weights(probe)))
  rows, stored = [], 0
  for load in args.loads:
    sdm = sdm.write(patterns[stored:load])
    stored = load
    n = min(num_queries, load)
    target = patterns[:n]
    for f in args.noise:
      q = queries[f][:n]
      reads = sdm.read(q, iterations=args.iterations).numpy()         # [I, n, D]
      reads = np.concatenate([q[np.newaxis], reads], axis=0)          # iteration 0 = query
      wrong = reads != target[np.newaxis]                             # [I + 1, n, D]
      rows.append(dict(stored=load, noise=f, queries=n,
                       error=np.mean(wrong, axis=(1, 2)).round(6).tolist(),
                       exact=np.mean(~np.any(wrong, axis=2), axis=1).round(4).tolist()))
    print(f"stored {load:5d}: " + "  ".join(
        f"noise {r['noise']:.2f} err {r['error'][1]:.4f}->{r['error'][-1]:.4f}"
        for r in rows[-len(args.noise):]), flush=True)
  return dict(num_addresses=args.num_addresses, dim=args.dim, radius=args.radius,
              selected_fraction_expected=binomial_tail(args.dim, args.radius),
              selected_fraction_measured=selected, iterations=args.iterations,
              seed=args.seed, rows=rows)


def plot(results, path):
  rows = results["rows"]
  noises = sorted({r["noise"] for r in rows})
  loads = sorted({r["stored"] for r in rows})
  last = results["iterations"]
  # Panels: error vs stored patterns, one error-vs-iteration panel per noise level, and a
  # last one holding the legend of the stored-pattern colours; 3 per row.
  num_panels = 2 + len(noises)
  nrows = -(-num_panels // 3)
  fig, grid = plt.subplots(nrows, 3, figsize=(13, 3.9 * nrows), constrained_layout=True,
                           squeeze=False)
  axes = grid.ravel()
  for ax in axes[num_panels:]:
    ax.axis("off")
  ax = axes[0]
  for i, f in enumerate(noises):
    color = f"C{i}"
    errs = [[r["error"] for r in rows if r["noise"] == f and r["stored"] == p][0]
            for p in loads]
    ax.plot(loads, [e[1] for e in errs], "o-", color=color, label=f"noise {f:.0%}, 1 read")
    ax.plot(loads, [e[last] for e in errs], "s--", color=color,
            label=f"noise {f:.0%}, {last} reads")
  ax.set_xscale("log")
  ax.set_xlabel("stored patterns")
  ax.set_ylabel("recall error (fraction of bits)")
  ax.set_title(f"K={results['num_addresses']}, D={results['dim']}, radius={results['radius']}")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  cmap = plt.get_cmap("viridis")
  for ax, f in zip(axes[1:1 + len(noises)], noises):
    for j, p in enumerate(loads):
      err = [r["error"] for r in rows if r["noise"] == f and r["stored"] == p][0]
      ax.plot(range(len(err)), err, ".-", color=cmap(j / max(1, len(loads) - 1)),
              label=f"{p} stored")
    ax.set_xlabel("iteration (0 = query)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("recall error (fraction of bits)")
    ax.set_title(f"query noise {f:.0%}")
    ax.set_ylim(-0.01, 0.51)
    ax.grid(alpha=0.3)
  legend = axes[1 + len(noises)]
  legend.axis("off")
  legend.legend(*axes[1].get_legend_handles_labels(), loc="center", title="error vs iteration",
                fontsize=8, ncol=2)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(results, command, seconds):
  rows = results["rows"]
  noises = sorted({r["noise"] for r in rows})
  loads = sorted({r["stored"] for r in rows})
  last = results["iterations"]
  lines = [
      "# Sparse distributed memory: recall error",
      "",
      f"Made on {datetime.date.today().isoformat()} by `{command}` "
      f"({seconds:.0f} s, {platform.processor() or platform.machine()}, TensorFlow "
      f"{tf.__version__}). Figure: [sdm_recall.png](sdm_recall.png); every number: "
      "[sdm_recall.json](sdm_recall.json).",
      "",
      f"K = {results['num_addresses']} random hard addresses in {{-1, +1}}^{results['dim']}, "
      f"radius {results['radius']}: selected fraction "
      f"{results['selected_fraction_measured']:.4f} measured on 200 random inputs, "
      f"P(Binomial({results['dim']}, 1/2) <= {results['radius']}) = "
      f"{results['selected_fraction_expected']:.4f} expected. Random patterns stored "
      "autoassociatively; each query is a stored pattern with round(noise D) of its bits "
      f"flipped ({', '.join(str(int(round(f * results['dim']))) for f in noises)} of "
      f"{results['dim']}, at random positions); up to {max(r['queries'] for r in rows)} "
      "queries per cell. Error = fraction of bits of the read that differ from the stored "
      "pattern; exact = fraction of queries read back without error.",
      "",
      "| stored | " + " | ".join(f"noise {f:.0%}: error 1 read / {last} reads (exact)"
                                  for f in noises) + " |",
      "|---:|" + "---:|" * len(noises),
  ]
  for p in loads:
    cells = []
    for f in noises:
      r = [r for r in rows if r["noise"] == f and r["stored"] == p][0]
      cells.append(f"{r['error'][1]:.4f} / {r['error'][last]:.4f} "
                   f"({r['exact'][1]:.2f} / {r['exact'][last]:.2f})")
    lines.append(f"| {p} | " + " | ".join(cells) + " |")
  lines += ["", "Error after each iteration (0 = the query):", "",
            "| stored | noise | " + " | ".join(str(i) for i in range(last + 1)) + " |",
            "|---:|---:|" + "---:|" * (last + 1)]
  for r in rows:
    lines.append(f"| {r['stored']} | {r['noise']:.0%} | "
                 + " | ".join(f"{e:.4f}" for e in r["error"]) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = define_flags(argv)
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  command = "python bench/sdm_recall.py" + (
      " " + shlex.join(argv if argv is not None else sys.argv[1:])
      if (argv if argv is not None else sys.argv[1:]) else "")
  start = time.time()
  results = run(args)
  seconds = time.time() - start
  results["command"] = command
  results["date"] = datetime.date.today().isoformat()
  results["seconds"] = round(seconds, 1)
  os.makedirs(args.out_dir, exist_ok=True)
  plot(results, os.path.join(args.out_dir, "sdm_recall.png"))
  with open(os.path.join(args.out_dir, "sdm_recall.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.out_dir, "sdm_recall.md"), "w") as f:
    f.write(markdown(results, command, seconds))
  print(f"wrote {args.out_dir}/sdm_recall.png, .json, .md in {seconds:.0f} s")


if __name__ == "__main__":
  main()
