r"""Training steps per second: 1 process vs 2 local workers (`--strategy=multi_worker`).

  python bench/multi_worker_throughput.py --data_dir=$TFDS_DATA_DIR   # Omniglot preset, B=16
  python bench/multi_worker_throughput.py --mock --tiny --steps=40    # no data, tiny model

Both configurations train the same global batch B (`--batch_size`) with `train.py`: one
process with one replica (`--strategy=one_device`), then two worker processes on localhost
(TF_CONFIG with two free ports), each with one CPU replica of B/2 episodes, their gradients
and metrics all-reduced over gRPC. Every process gets `--threads` TensorFlow threads
(TF_NUM_INTRAOP_THREADS; inter-op 1), so two workers use twice the threads of one process:
the ratio (2 workers / 1 process) is 2 for perfect scaling, and what it lacks is the cost of
the collectives and the smaller per-worker batch on this machine's CPUs.

Steps per second are measured from the `time` of the chief's metrics.jsonl records, from
the record of step 2 x `--log_every` to the last (the first call, of `--log_every` steps,
includes tracing): (last step - that step) / (last time - its time); so `--steps` must be
more than 2 x `--log_every`. `--rounds` repeats both configurations alternately. Results go to
results/multi_worker/throughput.{json,md}, with the load average before and after: other
processes on the machine make the numbers noisy.

`--mock` trains on TFDS's mock Omniglot through tests/multi_worker_helper.py (no data needed);
`--tiny` uses the tiny model of tests/test_distribute.py.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "multi_worker"
TINY = ["--episode_length=4", "--code_size=6", "--memory_size=5", "--address_size=4",
        "--num_filters=4", "--y_size=3"]


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _command(args, workdir, strategy):
  program = ([str(REPO / "tests" / "multi_worker_helper.py"), "--skip_eval_and_images=1"] +
             (["--mlp_hidden_size=8"] if args.tiny else []) if args.mock
             else [str(REPO / "train.py")])
  flags = ["--flagfile=" + str(REPO / "omniglot.flags"), f"--workdir={workdir}",
           f"--strategy={strategy}", f"--batch_size={args.batch_size}",
           f"--train_steps={args.steps}", f"--log_every={args.log_every}",
           f"--steps_per_call={args.log_every}", "--checkpoint_every=0", "--eval_every=0",
           "--image_every=0", "--eval_batches=1", "--export=false", "--nodownload"]
  if args.data_dir and not args.mock:
    flags.append(f"--data_dir={args.data_dir}")
  return [sys.executable, *program, *flags, *(TINY if args.tiny else [])]


def _env(args, tf_config=None):
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
  env.update(TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS="1",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
  if tf_config:
    env["TF_CONFIG"] = tf_config
  return env


def _rate(workdir, log_every):
  """Steps per second from the record of step 2 * log_every on, from the records' times."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [r for r in map(json.loads, f) if r["split"] == "train"]
  records = [r for r in records if r["step"] >= 2 * log_every] or records
  if len(records) < 2:
    raise RuntimeError(f"too few records in {workdir} to time: raise --steps")
  first, last = records[0], records[-1]
  return (last["step"] - first["step"]) / (last["time"] - first["time"])


def _run(commands, logs, timeout):
  procs = []
  for (command, env), log in zip(commands, logs):
    with open(log, "w") as f:
      procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=f,
                                    stderr=subprocess.STDOUT))
  for proc, log in zip(procs, logs):
    try:
      code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    if code:
      raise RuntimeError(f"{log} exited with {code}:\n{pathlib.Path(log).read_text()[-3000:]}")


def one_process(args, tmp, round_):
  workdir = os.path.join(tmp, f"one_{round_}")
  _run([(_command(args, workdir, "one_device"), _env(args))], [workdir + ".log"], args.timeout)
  return _rate(workdir, args.log_every)


def two_workers(args, tmp, round_):
  workdir = os.path.join(tmp, f"two_{round_}")
  ports = _free_ports(2)
  commands, logs = [], []
  for index in (0, 1):
    tf_config = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                            "task": {"type": "worker", "index": index}})
    commands.append((_command(args, workdir, "multi_worker"), _env(args, tf_config)))
    logs.append(f"{workdir}.worker{index}.log")
  _run(commands, logs, args.timeout)
  return _rate(workdir, args.log_every)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR"))
  parser.add_argument("--mock", action="store_true", help="mock Omniglot, no data needed")
  parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
  parser.add_argument("--batch_size", type=int, default=16, help="global batch B (even)")
  parser.add_argument("--steps", type=int, default=30, help="train steps per run")
  parser.add_argument("--log_every", type=int, default=10,
                      help="steps per record (and per tf.function call)")
  parser.add_argument("--threads", type=int, default=1, help="TF threads per process")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--timeout", type=float, default=1800)
  args = parser.parse_args()
  if args.batch_size % 2:
    parser.error("--batch_size must be even: it is split over the two workers")

  started = datetime.datetime.now(datetime.timezone.utc)
  load_before = os.getloadavg()
  one, two = [], []
  with tempfile.TemporaryDirectory(prefix="mw_bench_") as tmp:
    for round_ in range(args.rounds):
      one.append(one_process(args, tmp, round_))
      print(f"round {round_}: 1 process {one[-1]:.3f} steps/s", flush=True)
      two.append(two_workers(args, tmp, round_))
      print(f"round {round_}: 2 workers {two[-1]:.3f} steps/s", flush=True)
  load_after = os.getloadavg()
  ratios = [b / a for a, b in zip(one, two)]
  result = {
      "command": "python bench/multi_worker_throughput.py " + " ".join(sys.argv[1:]),
      "date": started.strftime("%Y-%m-%d %H:%M UTC"),
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "processor": platform.processor() or platform.machine()},
      "load_average_before": [round(x, 2) for x in load_before],
      "load_average_after": [round(x, 2) for x in load_after],
      "settings": {k: getattr(args, k) for k in ("mock", "tiny", "batch_size", "steps",
                                                  "log_every", "threads", "rounds")},
      "one_process_steps_per_sec": one,
      "two_workers_steps_per_sec": two,
      "ratio_two_workers_to_one_process": ratios,
      "median_ratio": statistics.median(ratios),
  }
  OUT.mkdir(parents=True, exist_ok=True)
  (OUT / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
  model = "tiny model (tests/test_distribute.py)" if args.tiny else "Omniglot preset"
  data = "mock Omniglot" if args.mock else "Omniglot"
  lines = [
      "# Multi-worker throughput: 1 process vs 2 local workers",
      "",
      f"`{result['command']}`, {result['date']}, {os.cpu_count()} CPUs "
      f"({result['machine']['processor']}), {model}, {data}, global batch "
      f"B={args.batch_size}, {args.steps} steps per run (timed from step "
      f"{2 * args.log_every} on), {args.threads} TensorFlow thread(s) per process, "
      f"{args.rounds} round(s).",
      "",
      "| round | 1 process, steps/s | 2 workers, steps/s | ratio 2 workers / 1 process |",
      "|---|---|---|---|",
  ]
  lines += [f"| {i} | {a:.3f} | {b:.3f} | {r:.2f} |"
            for i, (a, b, r) in enumerate(zip(one, two, ratios))]
  lines += [
      "",
      f"Median ratio: **{result['median_ratio']:.2f}** (2.00 = perfect scaling: the two "
      "workers use twice the threads of the one process).",
      "",
      f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
      f"after: {', '.join(f'{x:.2f}' for x in load_after)}, on {os.cpu_count()} CPUs. "
      "Other processes running during the measurement share the CPUs with the workers, so "
      "these numbers are noisy; with a load above the CPU count they are a lower bound of "
      "what the machine does alone.",
      "",
  ]
  (OUT / "throughput.md").write_text("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
