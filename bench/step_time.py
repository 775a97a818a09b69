r"""Training-step time of the Kanerva Machine vs the matched VAE (and inference throughput).

  python bench/step_time.py                 # Omniglot preset, B=16, T=32, oneDNN on and off
  python bench/step_time.py --quick         # tiny smoke run (< 1 minute)

What is timed is the function `train.py` runs on the steps whose metrics it does not log
(`training.make_train_function` with `diagnostics=False`, `check_inputs=False`: forward,
backward and Adam update, without the `kl_memory` diagnostic and the in-graph input checks,
which `train.py` runs in its input pipeline; `--steps` steps per `tf.function` call) on
random binary episodes, so the input pipeline is not included. Configurations (`--configs`):
`vae`, `kanerva` (default batch write), `kanerva_online` (one observation at a time,
section 3.3), `kanerva_chunk8`, the same with `_jit` (XLA), `vae_bf16` and `kanerva_bf16`
(`TrainConfig.precision="bfloat16"`: the encoder and decoder under Keras' mixed_bfloat16
policy), `vae_kerasadam` and `kanerva_kerasadam` (Keras' own Adam in place of train.py's
`kanerva_tf.optimizers.FusedAdam`: the before/after of the fused update), each also as `cifar_<config>` on the CIFAR-10
preset (ratios to `cifar_vae`), `kanerva_before`: the default Kanerva Machine with
issue 17's op reductions of the memory path undone (the code of commit 976c318; see
`_undo_speed_fixes`), and `kanerva_before_a69f5a7`: with, in addition, the two code changes
of commit a69f5a7 undone (einsum addressing, no-op decoder slices; `_undo_profile_fixes`),
so that with `--onednn 1,0` one run times the code before all those fixes
(`kanerva_before_a69f5a7`, oneDNN off) and after them (`kanerva`, oneDNN on).

TensorFlow's oneDNN kernels can only be switched per process (`TF_ENABLE_ONEDNN_OPTS` is read
at import), so each `--onednn` setting runs in its own worker process. Every configuration of
every worker is compiled first; then the parent times them *alternately* — round r runs each
configuration of worker 1, then of worker 2, ... — so machine noise hits all of them alike.
The table reports the median seconds per step over rounds, the median of the per-round ratios
to the VAE of the same worker, and the median per-round ratio of oneDNN off to on (the
before/after of the oneDNN switch). FLOPs per step are counted by the TF profiler on the
non-XLA graph (convolutions and matmuls; Cholesky and triangular solves are not counted) and
compared with the matmul peak measured in the same run (bench/matmul_peak.py).
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_OMNIGLOT_CONFIGS = ("vae", "kanerva", "kanerva_online", "kanerva_chunk8", "vae_jit",
                     "kanerva_jit", "kanerva_online_jit", "kanerva_before",
                     "kanerva_before_a69f5a7", "vae_bf16", "kanerva_bf16", "vae_kerasadam",
                     "kanerva_kerasadam")
# cifar_<config>: the same on the CIFAR-10 preset (32x32x3, K=128, C=200, 32 filters).
ALL_CONFIGS = _OMNIGLOT_CONFIGS + tuple("cifar_" + c for c in _OMNIGLOT_CONFIGS
                                        if not c.startswith("kanerva_before"))
DEFAULT_CONFIGS = "vae,kanerva,kanerva_online,vae_jit,kanerva_jit"


# ----------------------------------------------------------------------------- worker side
def _worker(args):
  """Builds and compiles the configurations, then serves 'round' / 'infer' / 'peak' commands
  from stdin, answering each with one JSON line on stdout."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import kanerva_tf as kt  # pylint: disable=g-import-not-at-top
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top
  from kanerva_tf.optimizers import FusedAdam  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  seed = tf.constant([0, 1], tf.int32)
  runs, info = {}, {}
  for name in args.configs.split(","):
    cfg = _model_config(kt, args, cifar=name.startswith("cifar_"))
    x = (rng.random((args.batch_size, cfg.episode_length) + cfg.image_shape) < 0.1).astype(
        np.float32)
    overrides = {}
    if "online" in name:
      overrides["write_method"] = "online"
    if "chunk8" in name:
      overrides = dict(write_method="online", chunk_size=8)
    model_cfg = kt.ModelConfig.from_dict({**cfg.to_dict(), **overrides})
    keras.utils.set_random_seed(0)
    is_vae = name.removeprefix("cifar_").startswith("vae")
    precision = "bfloat16" if name.endswith("_bf16") else "float32"
    model = (kt.VAE if is_vae else kt.KanervaMachine)(model_cfg, precision=precision)
    if name.startswith("kanerva_before"):
      _undo_speed_fixes(tf, model)
    if name == "kanerva_before_a69f5a7":
      _undo_profile_fixes(tf, model)
    model(tf.constant(x[:1]))
    optimizer = (keras.optimizers.Adam(1e-4) if name.endswith("_kerasadam")
                 else FusedAdam(1e-4))   # train.py's optimizer
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    fn = functools.partial(training.make_train_function(
        tf.distribute.get_strategy(), model, optimizer, step, keys=("loss",),
        global_batch_size=args.batch_size, seed=0, jit_compile=name.endswith("_jit"),
        check_inputs=False), diagnostics=False)  # as train.py's unlogged steps
    iterator = iter(tf.data.Dataset.from_tensors(x).repeat())
    num_steps = tf.constant(args.steps)
    t0 = time.perf_counter()
    float(fn(iterator, num_steps)["loss"])
    compile_s = time.perf_counter() - t0
    runs[name] = (fn, iterator, num_steps, model, x)
    info[name] = dict(compile_s=compile_s, flops=_flops(tf, model, optimizer, x, seed))
  for fn, iterator, num_steps, _, _ in runs.values():  # untimed warm-up: the first call after
    float(fn(iterator, num_steps)["loss"])          # building every model is slow once
  print(json.dumps(dict(ready=info, onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS"))), flush=True)

  for line in sys.stdin:
    command = line.strip()
    if command == "round":
      times = {}
      for name, (fn, iterator, num_steps, _, _) in runs.items():
        t0 = time.perf_counter()
        float(fn(iterator, num_steps)["loss"])
        times[name] = (time.perf_counter() - t0) / args.steps
      print(json.dumps(times), flush=True)
    elif command == "infer":
      print(json.dumps(_inference(tf, runs, seed, args)), flush=True)
    elif command == "peak":
      sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
      from matmul_peak import matmul_peak_gflops  # pylint: disable=g-import-not-at-top
      peak, _ = matmul_peak_gflops(sizes=(256,) if args.quick else (1024,), repeats=5)
      print(json.dumps(dict(peak=peak)), flush=True)
    elif command == "quit":
      return


def _undo_profile_fixes(tf, model):
  """Puts back, on this one KanervaMachine instance, the code that the profile
  (bench/profile_step.py) led to replace in commit a69f5a7, for a before/after in the same
  run: the addressing w = f(y)^T A as a broadcasting `tf.einsum("...s,ks->...k")` (now
  `tf.tensordot`), and a slice `h[:, :th, :tw]` after every decoder deconvolution even where
  it crops nothing (now skipped). The oneDNN switch, the third change, is the worker's
  `TF_ENABLE_ONEDNN_OPTS`."""
  model.addressing_weights = lambda y: tf.einsum(
      "...s,ks->...k", model.key(y), model.normalized_addresses())
  dec = model.decoder
  sizes = dec._sizes  # pylint: disable=protected-access  # [(H, W), ..., (h3, w3)]
  n = len(dec.deconvs)
  for i, deconv in enumerate(dec.deconvs):
    (h_in, w_in), target = sizes[n - i], sizes[n - i - 1]
    if (2 * h_in, 2 * w_in) == tuple(target):  # the stages where the old slice was a no-op
      deconv.call = lambda h, call=deconv.call, t=target: call(h)[:, :t[0], :t[1], :]


def old_write(loc, u, w, z, obs_var):
  """The per-episode batch write of eqs. 9-11 as `kanerva_tf.memory._write` computed it until
  2026-12-03: einsum products and one triangular solve of [Sigma_c | Delta] sliced apart.
  Shapes: R `[..., K, C]`, U `[..., K, K]`, w `[..., T, K]`, z `[..., T, C]`, obs_var
  `[..., T]`, all with one batch shape."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from tensorflow_probability.python.internal import prefer_static as ps  # pylint: disable=g-import-not-at-top

  def sym(m):
    return 0.5 * (m + tf.linalg.matrix_transpose(m))
  delta = z - tf.einsum("...tk,...kc->...tc", w, loc)               # eq. 9   [..., T, C]
  sigma_c = tf.einsum("...tk,...kl->...tl", w, u)                   # eq. 10  [..., T, K]
  sigma_z = (tf.einsum("...tk,...sk->...ts", sigma_c, w)
             + tf.linalg.diag(obs_var))                             # eq. 10  [..., T, T]
  chol = tf.linalg.cholesky(sym(sigma_z))
  solved = tf.linalg.triangular_solve(chol, tf.concat([sigma_c, delta], axis=-1), lower=True)
  k = ps.shape(u)[-1]
  b, e = solved[..., :k], solved[..., k:]
  new_loc = loc + tf.einsum("...tk,...tc->...kc", b, e)             # eq. 11
  new_u = u - tf.einsum("...tk,...tl->...kl", b, b)                 # eq. 11
  return new_loc, sym(new_u)


def _undo_speed_fixes(tf, model):
  """Puts back, on this one KanervaMachine instance, the memory path of commit 976c318 (before
  issue 17's op reductions), for a before/after in the same run (`kanerva_before`):

  - the key network f run twice (write and read addresses) with A normalised twice, and the
    addressing as `tf.tensordot(key, A, [[-1], [-1]])` (which transposes A);
  - the write (`KanervaMemory.update`, batch) with R_0 and U_0 broadcast to every episode,
    `tf.einsum` products and one triangular solve of [Sigma_c | Delta] sliced apart
    (`old_write`: `kanerva_tf.memory._write` as it was until 2026-12-03);
  - the read w R' as `tf.einsum`, and e_mean(x) sliced from the embedding again for
    read_posterior="encoder_skip".
  """
  from kanerva_tf import memory as memory_lib  # pylint: disable=g-import-not-at-top
  from kanerva_tf import model as model_lib  # pylint: disable=g-import-not-at-top
  from tensorflow_probability.python.internal import prefer_static as ps  # pylint: disable=g-import-not-at-top

  def addressing_weights(y):
    return tf.tensordot(model.key(y), model.normalized_addresses(), [[-1], [-1]])

  def write_and_read_weights(mean_y, scale_y, write_seed, read_seed):
    w_write = model.write_weights(mean_y, scale_y, write_seed)
    return w_write, addressing_weights(model_lib._sample_normal(mean_y, scale_y, read_seed))  # pylint: disable=protected-access

  def update(prior, w, z, noise_variance, z_variance):  # KanervaMemory.update, method="batch"
    obs_var = tf.convert_to_tensor(noise_variance, dtype=prior.dtype)
    if z_variance is not None:
      obs_var = obs_var + z_variance
    obs_var = tf.broadcast_to(obs_var, ps.shape(w)[:-1])
    loc, u = tf.convert_to_tensor(prior.loc), tf.convert_to_tensor(prior.row_covariance)
    loc, u, w, z, obs_var = memory_lib._broadcast_to_batch(loc, u, w, z, obs_var)  # pylint: disable=protected-access
    new_loc, new_u = old_write(loc, u, w, z, obs_var)
    return memory_lib.KanervaMemory(new_loc, new_u, name=prior.name)

  cfg = model.config
  if cfg.write_method != "batch" or cfg.row_covariance != "full" or cfg.distribution_memory:
    raise ValueError("_undo_speed_fixes: only for the default batch write, full U, sample write")

  def write(embedding, w, seed, prior=None, q_z_x=None):
    del q_z_x
    mean, scale = model_lib._split_normal(embedding)  # pylint: disable=protected-access
    z = model_lib._sample_normal(mean, scale, seed)  # pylint: disable=protected-access
    return update(model.prior() if prior is None else prior, w, z, cfg.noise_variance, None)

  def memory_prior_on_z(memory, w):
    return (tf.einsum("...tk,...kc->...tc", w, tf.convert_to_tensor(memory.loc)),
            tf.constant(cfg.noise_variance ** 0.5, tf.float32))

  q_z_params = model.q_z_params
  model.addressing_weights = addressing_weights
  model._write_and_read_weights = write_and_read_weights  # pylint: disable=protected-access
  model._write = write  # pylint: disable=protected-access
  model._memory_prior_on_z = memory_prior_on_z  # pylint: disable=protected-access
  model.q_z_params = lambda embedding, prior_mean, prior_scale=None, encoder_mean=None: (
      q_z_params(embedding, prior_mean, prior_scale))


def _model_config(kt, args, cifar=False):
  """The Omniglot preset, or the CIFAR-10 one for `cifar_*` configurations."""
  preset = kt.ModelConfig.cifar if cifar else kt.ModelConfig.omniglot
  if args.quick:
    return preset(code_size=8, memory_size=8, address_size=4, num_filters=4,
                  y_size=4, mlp_hidden_size=16, episode_length=4)
  return preset(episode_length=args.episode_length)


def _flops(tf, model, optimizer, x, seed):
  """FLOPs of one plain (non-XLA) training step counted by the TF profiler, or None."""
  variables = model.trainable_variables

  @tf.function
  def step(x, seed):
    with tf.GradientTape() as tape:
      loss = model(x, training=True, seed=seed, diagnostics=False, check_inputs=False)["loss"]
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  try:
    from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-import-not-at-top
    from tensorflow.python.profiler import option_builder  # pylint: disable=g-import-not-at-top
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    graph = step.get_concrete_function(tf.constant(x), seed).graph
    return model_analyzer.profile(graph, options=opts).total_float_ops
  except Exception:  # pylint: disable=broad-except
    return None


def _inference(tf, runs, seed, args):
  """Median seconds per batch of KanervaMachine.write + one read (the reconstruct path)."""
  if "kanerva" not in runs:
    return {}
  km, x = runs["kanerva"][3], runs["kanerva"][4]

  @tf.function
  def write_read(x, seed):
    memory = km.write(x, seed=seed)
    return km.read(x, memory, 1, seed=seed)

  x = tf.constant(x)
  write_read(x, seed)
  times = []
  for _ in range(args.rounds):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      out = write_read(x, seed)
    out.numpy()
    times.append((time.perf_counter() - t0) / args.steps)
  return dict(write_read_s=statistics.median(times))


# ----------------------------------------------------------------------------- parent side
def _machine():
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


class _Worker:
  """A worker process with one TF_ENABLE_ONEDNN_OPTS setting."""

  def __init__(self, onednn, argv):
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
    self.onednn = onednn
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"] + argv,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)
    self.ready = self._read()["ready"]

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"bench worker (oneDNN={self.onednn}) died: exit {self.proc.wait()}")
    return json.loads(line)

  def ask(self, command):
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    self.proc.stdin.write("quit\n")
    self.proc.stdin.close()
    self.proc.wait()


def _worker_argv(args):
  """The worker's command-line arguments, rebuilt from the parsed ones (so that every flag
  spelling, `--rounds 7` or `--rounds=7`, reaches it alike); the oneDNN setting goes by
  environment instead."""
  return ([f"--batch_size={args.batch_size}", f"--episode_length={args.episode_length}",
           f"--steps={args.steps}", f"--rounds={args.rounds}", f"--configs={args.configs}"]
          + (["--quick"] if args.quick else []))


def parse_args(argv):
  """The parsed and checked arguments (`args.settings`: the oneDNN settings as a list)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--episode_length", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed round (one call)")
  parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
  parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                      help=f"comma list of: {', '.join(ALL_CONFIGS)}")
  parser.add_argument("--onednn", default="1,0",
                      help="comma list of TF_ENABLE_ONEDNN_OPTS values, one worker each; the "
                      "first is the reference")
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if min(args.batch_size, args.episode_length, args.steps, args.rounds) <= 0:
    parser.error("batch_size, episode_length, steps and rounds must be positive")
  configs = [c.strip() for c in args.configs.split(",") if c.strip()]
  unknown = sorted(set(configs) - set(ALL_CONFIGS))
  if unknown or not configs:
    parser.error(f"--configs: unknown {unknown}; choose from {', '.join(ALL_CONFIGS)}")
  settings = [s.strip() for s in args.onednn.split(",") if s.strip()]
  if not settings or any(s not in ("0", "1") for s in settings):
    parser.error(f"--onednn must be a comma list of 0 / 1; got {args.onednn!r}")
  if args.quick:
    args.batch_size, args.episode_length, args.steps, args.rounds = 2, 4, 2, 2
  args.configs = ",".join(configs)
  args.settings = settings
  return args


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  settings, configs = args.settings, args.configs.split(",")
  if args.worker:
    return _worker(args)

  worker_argv = _worker_argv(args)
  print(f"# bench/step_time.py — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
  print(f"# machine: {_machine()}")
  print(f"# command: python bench/step_time.py {' '.join(argv)}")
  print(f"# B={args.batch_size} T={args.episode_length} (Omniglot preset, cifar_*: CIFAR-10 "
        f"preset; tiny sizes with --quick); "
        f"{args.rounds} alternating rounds x {args.steps} steps (one tf.function call); "
        f"oneDNN settings {settings}, one worker process each\n")
  workers = [_Worker(s, worker_argv) for s in settings]
  times = {(w.onednn, c): [] for w in workers for c in configs}
  for _ in range(args.rounds):
    for w in workers:
      for c, t in w.ask("round").items():
        times[(w.onednn, c)].append(t)
  peak = workers[0].ask("peak")["peak"]
  infer = workers[0].ask("infer")
  for w in workers:
    w.close()

  images = args.batch_size * args.episode_length
  ref = settings[0]
  print("| config | oneDNN | median s/step | ratio to VAE (same oneDNN) | oneDNN off/on | "
        "images/s | GFLOP/step | GFLOP/s | % of matmul peak | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for w in workers:
    for c in configs:
      ts = times[(w.onednn, c)]
      med = statistics.median(ts)
      base = times.get((w.onednn, "cifar_vae" if c.startswith("cifar_") else "vae"))
      ratio = "%.3f" % statistics.median(a / b for a, b in zip(ts, base)) if base else "n/a"
      other = [s for s in settings if s != w.onednn]
      if w.onednn == ref and "0" in other and (("0", c) in times):
        off_on = "%.2f" % statistics.median(a / b for a, b in zip(times[("0", c)], ts))
      else:
        off_on = ""
      flops = w.ready[c]["flops"]
      gflop = flops / 1e9 if flops else None
      print(f"| {c} | {'on' if w.onednn == '1' else 'off'} | {med:.4f} | {ratio} | {off_on} | "
            f"{images / med:.0f} | {'%.2f' % gflop if gflop else 'n/a'} | "
            f"{'%.1f' % (gflop / med) if gflop else 'n/a'} | "
            f"{'%.0f%%' % (100 * gflop / med / peak) if gflop else 'n/a'} | "
            f"{w.ready[c]['compile_s']:.1f} |")
  def ratio(a, b):  # median of the per-round ratios of two timed series
    return statistics.median(x / y for x, y in zip(times[a], times[b]))
  if "kanerva_before" in configs and "kanerva" in configs:
    print(f"\nissue 17 memory-path op reductions, before / after (median of per-round ratios):")
    for s in settings:
      print(f"- code of 976c318, oneDNN {'on' if s == '1' else 'off'}: "
            f"kanerva_before / kanerva = {ratio((s, 'kanerva_before'), (s, 'kanerva')):.3f}")
  if "kanerva_before_a69f5a7" in configs and "kanerva" in configs:
    print(f"\nprofile fixes of a69f5a7 and issue 17, before / after (median of per-round ratios):")
    for s in settings:
      print(f"- einsum addressing + no-op decoder slices + issue 17 undone, oneDNN "
            f"{'on' if s == '1' else 'off'}: kanerva_before_a69f5a7 / kanerva = "
            f"{ratio((s, 'kanerva_before_a69f5a7'), (s, 'kanerva')):.3f}")
    if {"0", "1"} <= set(settings):
      print(f"- all (code before the fixes with oneDNN off vs the current default): "
            f"kanerva_before_a69f5a7 (oneDNN off) / kanerva (oneDNN on) = "
            f"{ratio(('0', 'kanerva_before_a69f5a7'), ('1', 'kanerva')):.3f}")
  fastest = min(configs, key=lambda c: statistics.median(times[(ref, c)]))
  print(f"\nfastest configuration (oneDNN={ref}): {fastest}")
  print(f"matmul peak (float32, tf.linalg.matmul in tf.function, oneDNN={ref}): {peak:.1f} GFLOP/s")
  if infer:
    s = infer["write_read_s"]
    print(f"inference write + read (KanervaMachine, oneDNN={ref}): {s:.4f} s per batch of "
          f"{images} images, {images / s:.0f} images/s")
  return None


if __name__ == "__main__":
  main()
