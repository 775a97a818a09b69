r"""Where a training step's time goes: TF-profiler op times of the real training function.

  python bench/profile_step.py                       # KM and VAE, Omniglot preset, B=16, T=32
  python bench/profile_step.py --models kanerva --steps 5 --top 25

Runs `training.make_train_function` (the function `train.py` runs, one device) on random
binary episodes, traces `--steps` steps with `tf.profiler`, and sums the executor's op
events from the trace (`<scope>/<op name>:<op type>`). Reported per model:

- by op type (Conv2D, Conv2DBackpropFilter, MatMul, Cholesky, ...),
- by single op (scoped name), and
- by part: forward or backward (`gradient_tape/` scope) x the layer the op belongs to
  (encoder, decoder, q_y, key, q_z_read, memory, ...), and the optimizer (`adam/`),

as a share of the summed op time (ops of one step may run concurrently on the two cores,
so the sum can exceed the wall time, which is printed as well).
"""

import argparse
import collections
import datetime
import functools
import glob
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as kanerva_tf; TF_ENABLE_ONEDNN_OPTS=0 to compare

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-direct-tensorflow-import

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kanerva_tf as kt  # pylint: disable=g-import-not-at-top
from kanerva_tf import optimizers  # pylint: disable=g-import-not-at-top
from kanerva_tf import training  # pylint: disable=g-import-not-at-top

_PARTS = ("encoder", "decoder", "q_y", "key", "q_z_read")


def op_events(logdir):
  """[(name, op_type, duration_ps)] of every TF op event in the trace under `logdir`."""
  paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise RuntimeError(f"no profiler trace (*.xplane.pb) under {logdir}")
  space = xplane_pb2.XSpace()
  with open(paths[0], "rb") as f:
    space.ParseFromString(f.read())
  events = []
  for plane in space.planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_Compute") and not line.name.startswith("tf_"):
        continue
      for event in line.events:
        full = plane.event_metadata[event.metadata_id].name
        if ":" not in full or "::" in full:
          continue
        name, op_type = full.rsplit(":", 1)
        events.append((name, op_type, event.duration_ps))
  return events


def part_of(name):
  """'forward/encoder', 'backward/decoder', 'optimizer', ... for an op's scoped name."""
  if name.startswith("adam/") or "/adam/" in name:
    return "optimizer"
  direction = "backward" if "gradient_tape/" in name else "forward"
  scopes = [re.sub(r"_\d+$", "", s) for s in name.split("/")]
  for part in _PARTS:
    if part in scopes:
      return f"{direction}/{part}"
  if any(s.startswith("res_block") for s in scopes):
    return f"{direction}/(res block)"
  if "KanervaMemory" in name or "update" in scopes or "prior_memory" in name:
    return f"{direction}/memory"
  return f"{direction}/other"


def profile(model_type, cfg, batch_size, steps, jit):
  """Op events and wall seconds/step of `steps` traced training steps."""
  keras.utils.set_random_seed(0)
  model = kt.VAE(cfg) if model_type == "vae" else kt.KanervaMachine(cfg)
  rng = np.random.default_rng(0)
  x = (rng.random((batch_size, cfg.episode_length) + cfg.image_shape) < 0.1).astype(np.float32)
  strategy = tf.distribute.get_strategy()
  model(tf.constant(x[:1]))
  optimizer = optimizers.FusedAdam(1e-4)  # train.py's optimizer
  optimizer.build(model.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  keys = ("loss",)
  # As train.py's unlogged steps (and bench/step_time.py): no kl_memory diagnostic, no
  # in-graph input checks (train.py checks the input in its tf.data pipeline).
  fn = functools.partial(training.make_train_function(
      strategy, model, optimizer, step, keys=keys, global_batch_size=batch_size, seed=0,
      jit_compile=jit, check_inputs=False), diagnostics=False)
  iterator = iter(tf.data.Dataset.from_tensors(x).repeat())
  float(fn(iterator, tf.constant(1))["loss"])  # trace and warm up
  float(fn(iterator, tf.constant(1))["loss"])
  logdir = tempfile.mkdtemp(prefix=f"profile_{model_type}_")
  tf.profiler.experimental.start(logdir)
  t0 = time.perf_counter()
  float(fn(iterator, tf.constant(steps))["loss"])
  wall = (time.perf_counter() - t0) / steps
  tf.profiler.experimental.stop()
  return op_events(logdir), wall


def table(title, totals, grand, steps, top):
  print(f"\n| {title} | ms/step | share |\n|---|---|---|")
  for key, ps in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    print(f"| {key} | {ps / 1e9 / steps:.1f} | {100 * ps / grand:.1f}% |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="kanerva,vae")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--episode_length", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--jit", action="store_true")
  parser.add_argument("--write_method", default="batch", choices=("batch", "online"))
  args = parser.parse_args(argv)
  if min(args.batch_size, args.episode_length, args.steps, args.top) <= 0:
    parser.error("batch_size, episode_length, steps and top must be positive")
  cfg = kt.ModelConfig.omniglot(episode_length=args.episode_length,
                                write_method=args.write_method)
  print(f"# bench/profile_step.py — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
        f" UTC, {os.cpu_count()} cores, TF {tf.__version__}")
  print(f"# TF_ENABLE_ONEDNN_OPTS={os.environ['TF_ENABLE_ONEDNN_OPTS']}")
  print(f"# command: python bench/profile_step.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}")
  for model_type in [m.strip() for m in args.models.split(",") if m.strip()]:
    events, wall = profile(model_type, cfg, args.batch_size, args.steps, args.jit)
    by_type, by_part, by_op = (collections.Counter() for _ in range(3))
    for name, op_type, ps in events:
      by_type[op_type] += ps
      by_part[part_of(name)] += ps
      by_op[f"{name} ({op_type})"] += ps
    grand = sum(by_type.values())
    print(f"\n## {model_type}: wall {wall:.3f} s/step, summed op time "
          f"{grand / 1e12 / args.steps:.3f} s/step ({len(events) // args.steps} op events/step)")
    table("op type", by_type, grand, args.steps, args.top)
    table("part", by_part, grand, args.steps, args.top)
    table("single op", by_op, grand, args.steps, args.top)


if __name__ == "__main__":
  main()
