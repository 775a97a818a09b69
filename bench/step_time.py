r"""Training-step time of the Kanerva Machine vs the matched VAE (and inference throughput).

  python bench/step_time.py                 # Omniglot preset, B=16, T=32
  python bench/step_time.py --quick         # tiny smoke run (< 1 minute)

Every configuration is compiled first, then the configurations are timed *alternately*
(round-robin, `--rounds` rounds of `--steps` steps each), so machine noise hits all of them
alike; the table reports the median seconds per step over rounds and the ratio to the VAE
measured in the same round. Data are random binary episodes (the input pipeline is not timed;
it is measured separately as `pipeline`). FLOPs per step are counted by the TF profiler
on the traced training step (convolutions and matmuls; Cholesky/triangular solves are not
counted by the profiler), and compared with the measured matmul peak (bench/matmul_peak.py).
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kanerva_tf as kt  # pylint: disable=g-import-not-at-top


def _train_step(model, optimizer, jit):
  variables = model.trainable_variables

  def grads(x, seed):
    with tf.GradientTape() as tape:
      loss = model(x, training=True, seed=seed)["loss"]
    return tape.gradient(loss, variables), loss

  if jit:
    grads = tf.function(grads, jit_compile=True)

  @tf.function
  def step(x, seed):
    g, loss = grads(x, seed)
    optimizer.apply_gradients(zip(g, variables))
    return loss

  return step


def _flops(fn, *args):
  """FLOPs of one call of tf.function `fn` counted by the TF profiler (None if unavailable)."""
  try:
    from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-import-not-at-top
    from tensorflow.python.profiler import option_builder  # pylint: disable=g-import-not-at-top
    graph = fn.get_concrete_function(*args).graph
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return model_analyzer.profile(graph, options=opts).total_float_ops
  except Exception:  # pylint: disable=broad-except
    return None


def _machine():
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{os.cpu_count()} cores, {cpu}, TF {tf.__version__}, Python {platform.python_version()}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--episode_length", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
  parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
  parser.add_argument("--configs", default="vae,kanerva,kanerva_online,vae_jit,kanerva_jit",
                      help="comma list of: vae, kanerva, kanerva_online, kanerva_chunk8, "
                      "vae_jit, kanerva_jit, kanerva_online_jit")
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
  args = parser.parse_args(argv)
  if min(args.batch_size, args.episode_length, args.steps, args.rounds) <= 0:
    parser.error("batch_size, episode_length, steps and rounds must be positive")
  cfg = kt.ModelConfig.omniglot(episode_length=args.episode_length)
  if args.quick:
    cfg = kt.ModelConfig.omniglot(code_size=8, memory_size=8, address_size=4, num_filters=4,
                                  y_size=4, mlp_hidden_size=16, episode_length=4)
    args.batch_size, args.episode_length, args.steps, args.rounds = 2, 4, 2, 2

  print(f"# bench/step_time.py — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
  print(f"# machine: {_machine()}")
  print(f"# command: python bench/step_time.py {' '.join(argv if argv is not None else sys.argv[1:])}")
  print(f"# B={args.batch_size} T={args.episode_length}, K={cfg.memory_size} C={cfg.code_size} "
        f"F={cfg.num_filters}; {args.rounds} alternating rounds x {args.steps} steps\n")

  rng = np.random.default_rng(0)
  x = tf.constant((rng.random((args.batch_size, args.episode_length) + cfg.image_shape) < 0.1)
                  .astype(np.float32))
  seed = tf.constant([0, 1], tf.int32)
  runs = {}
  for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
    model_type = "vae" if name.startswith("vae") else "kanerva"
    overrides = {}
    if "online" in name:
      overrides["write_method"] = "online"
    if "chunk8" in name:
      overrides = dict(write_method="online", chunk_size=8)
    model_cfg = kt.ModelConfig.from_dict({**cfg.to_dict(), **overrides})
    keras.utils.set_random_seed(0)
    model = kt.VAE(model_cfg) if model_type == "vae" else kt.KanervaMachine(model_cfg)
    model(x[:1])
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
    step = _train_step(model, optimizer, jit=name.endswith("_jit"))
    t0 = time.perf_counter()
    float(step(x, seed))
    compile_s = time.perf_counter() - t0
    # XLA-compiled steps hide their ops from the profiler: count the non-jit graph instead.
    flops = _flops(_train_step(model, optimizer, jit=False), x, seed)
    runs[name] = dict(step=step, compile=compile_s, times=[], model=model, flops=flops)

  for _ in range(args.rounds):
    for name, run in runs.items():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        loss = run["step"](x, seed)
      float(loss)
      run["times"].append((time.perf_counter() - t0) / args.steps)

  from matmul_peak import matmul_peak_gflops  # pylint: disable=g-import-not-at-top
  peak, _ = matmul_peak_gflops(sizes=(256,) if args.quick else (1024,), repeats=5)
  base = runs.get("vae")
  images = args.batch_size * args.episode_length
  print("| config | median s/step | ratio to VAE (median of per-round ratios) | images/s | "
        "GFLOP/step (profiler) | GFLOP/s | % of matmul peak | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for name, run in runs.items():
    med = statistics.median(run["times"])
    ratio = ("%.3f" % statistics.median(a / b for a, b in zip(run["times"], base["times"]))
             if base else "n/a")
    gflop = run["flops"] / 1e9 if run["flops"] else None
    rate = f"{gflop / med:.1f}" if gflop else "n/a"
    frac = f"{100 * gflop / med / peak:.0f}%" if gflop else "n/a"
    print(f"| {name} | {med:.4f} | {ratio} | {images / med:.0f} | "
          f"{'%.2f' % gflop if gflop else 'n/a'} | {rate} | {frac} | {run['compile']:.1f} |")
  print(f"\nmatmul peak (float32, tf.linalg.matmul in tf.function): {peak:.1f} GFLOP/s")

  # Inference: write + one read of the episode (KanervaMachine.reconstruct path).
  km = runs.get("kanerva", {}).get("model")
  if km is not None:
    @tf.function
    def write_read(x, seed):
      memory = km.write(x, seed=seed)
      return km.read(x, memory, 1, seed=seed)

    write_read(x, seed)
    times = []
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      for _ in range(args.steps):
        out = write_read(x, seed)
      out.numpy()
      times.append((time.perf_counter() - t0) / args.steps)
    print(f"inference write+read: {statistics.median(times):.4f} s per batch, "
          f"{images / statistics.median(times):.0f} images/s")


if __name__ == "__main__":
  main()
