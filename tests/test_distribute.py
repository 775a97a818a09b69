"""Tests of kanerva_tf.distribute and of multi-worker training (strategy "multi_worker").

In this process: TF_CONFIG checks, the workers' parts of the data, the settings. In worker
processes on localhost (tests/multi_worker_helper.py: train.py on mock Omniglot, one CPU
device each; marked slow, minutes on a loaded 2-core machine): two workers against one
process with two logical devices, a killed worker, a stuck worker, SIGTERM, and resuming.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kanerva_tf import data as data_lib
from kanerva_tf import distribute
from kanerva_tf import runs
from kanerva_tf import training

REPO = pathlib.Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "multi_worker_helper.py"
LOST_WORKER_BOUND = 30.  # seconds from a worker's death to the others' exit

# A tiny Kanerva Machine (train.py flags; the MLP width is the helper's flag).
TINY_FLAGS = ["--dataset=omniglot", "--episode_length=4", "--code_size=6", "--memory_size=5",
              "--address_size=4", "--num_filters=4", "--y_size=3", "--batch_size=2",
              "--learning_rate=1e-3", "--eval_batches=1", "--eval_every=0", "--image_every=0",
              "--export=false", "--steps_per_call=2", "--log_every=2", "--checkpoint_every=2"]


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "KANERVA_TRACEBACK")}
  env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", PYTHONPATH=str(REPO),
             TF_CPP_MIN_LOG_LEVEL="2", **extra)
  return env


def _tf_config(ports, index):
  return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}})


# ----------------------------------------------------------------------------- TF_CONFIG
@pytest.mark.parametrize("value, problem", [
    (None, "it is not set"),
    ("", "it is not set"),
    ("{cluster: 1}", "it is not JSON"),
    ("{}", 'it has no "cluster" of workers'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'it has no "task" with a "type" and an "index"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "its task {'type': 'worker', 'index': 1} is not one of the cluster's"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["c:3"]}, "task": {"type": "worker", "index": 0}}',
     "its cluster has ['ps'] tasks"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     'cluster "worker" must be a list of "host:port" strings'),
])
def test_a_missing_or_unusable_tf_config_fails_at_once_with_its_expected_form(
    value, problem, monkeypatch):
  if value is None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  else:
    monkeypatch.setenv("TF_CONFIG", value)
  for make in (distribute.multi_worker_task, lambda: distribute.make_strategy("multi_worker")):
    with pytest.raises(ValueError) as error:
      make()
    message = str(error.value)
    assert problem in message
    assert f"TF_CONFIG='{distribute.TF_CONFIG_EXAMPLE}' on the first" in message
  assert json.loads(distribute.TF_CONFIG_EXAMPLE)["task"] == {"type": "worker", "index": 0}


@pytest.mark.parametrize("cluster, task, want", [
    ({"worker": ["a:1", "b:2"]}, ("worker", 0), (0, 2, True)),
    ({"worker": ["a:1", "b:2"]}, ("worker", 1), (1, 2, False)),
    ({"chief": ["c:0"], "worker": ["a:1", "b:2"]}, ("chief", 0), (0, 3, True)),
    ({"chief": ["c:0"], "worker": ["a:1", "b:2"]}, ("worker", 0), (1, 3, False)),
    ({"chief": ["c:0"], "worker": ["a:1", "b:2"]}, ("worker", 1), (2, 3, False)),
])
def test_the_chief_and_the_worker_index_follow_tensorflow(cluster, task, want):
  """The chief is task "chief", else worker 0; `worker` is TensorFlow's id in the cluster
  (`multi_worker_util.id_in_cluster`), the input pipeline of the worker's data."""
  from tensorflow.python.distribute import multi_worker_util  # pylint: disable=g-import-not-at-top
  got = distribute.multi_worker_task(json.dumps(
      {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}))
  assert (got.worker, got.num_workers, got.is_chief) == want
  spec = tf.train.ClusterSpec(cluster)
  assert got.worker == multi_worker_util.id_in_cluster(spec, *task)
  assert got.is_chief == multi_worker_util.is_chief(spec, *task)


def test_train_and_evaluate_without_tf_config_fails_before_any_work(tmp_path, monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  config = training.TrainConfig(strategy="multi_worker", train_steps=2, batch_size=2)
  with pytest.raises(ValueError, match="reads its cluster from the TF_CONFIG environment "
                     "variable: it is not set"):
    training.train_and_evaluate(None, config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="multi_worker", collective_timeout_seconds=-1.),
     "collective_timeout_seconds must be a number >= 0"),
    (dict(strategy="multi_worker", collective_implementation="mpi"),
     "collective_implementation must be one of"),
    (dict(strategy="mirrored", collective_timeout_seconds=30.),
     "apply to strategy='multi_worker' only; got strategy='mirrored'"),
])
def test_bad_multi_worker_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    training.TrainConfig(**kwargs)
  training.TrainConfig(strategy="multi_worker", collective_timeout_seconds=30.,
                       collective_implementation="nccl")


# ----------------------------------------------------------------------------- data
def _batches(ds, n):
  return [tf.nest.map_structure(lambda t: t.numpy(), x) for x in ds.take(n)]


def test_the_parts_of_a_batch_are_disjoint_slices_and_deterministic(mock_omniglot):
  """Two workers draw different episodes, each the same ones on every call, and together
  exactly the batches of one input pipeline. (The labels tell the mock's images apart: most
  of them are all ink once binarized.)"""
  kwargs = dict(batch_size=4, episode_length=3, seed=5, with_labels=True)
  whole = _batches(data_lib.episode_dataset("omniglot", "train", **kwargs), 3)
  parts = [_batches(data_lib.episode_dataset("omniglot", "train", part=(p, 2), **kwargs), 3)
           for p in (0, 1)]
  again = _batches(data_lib.episode_dataset("omniglot", "train", part=(1, 2), **kwargs), 3)
  for i in range(3):
    (x0, y0), (x1, y1), (x, y) = parts[0][i], parts[1][i], whole[i]
    assert x0.shape == x1.shape == (2, 3, 28, 28, 1) and y0.shape == (2, 3)
    np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
    np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
    assert not np.array_equal(y0, y1)  # a collision of random episodes is very unlikely
    np.testing.assert_array_equal(again[i][0], x1)
    np.testing.assert_array_equal(again[i][1], y1)
  assert not np.array_equal(parts[0][0][1], parts[0][1][1])  # batches differ too
  for part, message in [((2, 2), r"0 <= p < P; got \(2, 2\)"), ((0, 3), "divisible by the "
                                                                "number of parts 3")]:
    with pytest.raises(ValueError, match=message):
      data_lib.episode_dataset("omniglot", "train", part=part, **kwargs)


@pytest.mark.parametrize("replicas", [2, 4])
def test_each_replica_of_the_cluster_gets_its_slice_of_the_global_batch(mock_omniglot,
                                                                        replicas):
  """`worker_dataset_fn` with 2 workers of 1 (CPUs) or 2 (GPUs) replicas each: local
  replica j of worker w is replica r = w * local + j of the cluster and gets rows
  [r B/R, (r + 1) B/R) of every global batch, as replica r of one process with R devices."""
  batch, local = 8, replicas // 2
  kwargs = dict(batch_size=batch, episode_length=3, seed=11)
  whole = _batches(data_lib.episode_dataset("omniglot", "train", **kwargs), 2)
  fn = distribute.worker_dataset_fn("omniglot", "train", **kwargs)
  streams = [_batches(fn(tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=w, num_replicas_in_sync=replicas)), 2 * local)
             for w in (0, 1)]
  size = batch // replicas
  for i in range(2):
    for w in (0, 1):
      for j in range(local):
        r = w * local + j
        np.testing.assert_array_equal(streams[w][i * local + j],
                                      whole[i][r * size:(r + 1) * size])


# ----------------------------------------------------------------------------- train.py
@pytest.mark.slow
def test_train_py_multi_worker_flags_and_a_missing_tf_config(tmp_path):
  """The flags reach the TrainConfig; without TF_CONFIG, train.py fails at once (no data
  loaded, no workdir) with one line that shows TF_CONFIG's form."""
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-c", f"""if True:
      import train
      from kanerva_tf import cli
      train.define_flags()
      args = ["train.py", "--flagfile=omniglot.flags", "--strategy=multi_worker",
              "--collective_timeout_seconds=45", "--collective_implementation=ring",
              "--workdir={workdir}", "--data_dir=/nonexistent", "--nodownload"]
      train.FLAGS(args)
      config = train.configs_from_flags()[1]
      assert (config.strategy, config.collective_timeout_seconds,
              config.collective_implementation) == ("multi_worker", 45., "ring"), config
      print("OK", flush=True)
      try:
        train.main(["train.py"])
      except Exception as e:
        cli.exit_with_error("train.py", e)
      """], cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
  assert "OK" in proc.stdout, proc.stderr[-3000:]
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: error: strategy 'multi_worker' reads its cluster from the "
                         "TF_CONFIG environment variable: it is not set."), last
  assert distribute.TF_CONFIG_EXAMPLE in last
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


# ----------------------------------------------------------------------------- workers
def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


class _Process:
  """A helper process; its stdout and stderr go to a file."""

  def __init__(self, args, log, env):
    self.log = log
    with open(log, "w") as f:
      self.popen = subprocess.Popen([sys.executable, str(HELPER), "--mlp_hidden_size=8",
                                     "--skip_eval_and_images=1", *args], cwd=REPO, env=env,
                                    stdout=f, stderr=subprocess.STDOUT)

  def wait(self, timeout=900):
    try:
      return self.popen.wait(timeout)
    except subprocess.TimeoutExpired:
      self.popen.kill()
      raise AssertionError(f"{self.log} did not finish within {timeout} s:\n{self.text()[-3000:]}")

  def text(self):
    return pathlib.Path(self.log).read_text()

  def last_line(self):
    return self.text().strip().splitlines()[-1]


def _workers(tmp_path, name, workdirs, flags, helper_flags=((), ())):
  """Starts the two workers of a new cluster on free localhost ports."""
  ports = _free_ports(2)
  return [_Process([*helper_flags[i], *TINY_FLAGS, "--strategy=multi_worker",
                    f"--workdir={workdirs[i]}", *flags], str(tmp_path / f"{name}{i}.log"),
                   _env(TF_CONFIG=_tf_config(ports, i))) for i in (0, 1)]


def _wait_all(processes, timeout=900):
  codes = [p.wait(timeout) for p in processes]
  return codes


def _records(workdir, split="train"):
  path = runs.metrics_path(str(workdir))
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def _checkpoint_steps(workdir):
  state = tf.train.get_checkpoint_state(runs.checkpoint_dir(str(workdir)))
  return sorted(int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths)


def _variables(workdir, step):
  reader = tf.train.load_checkpoint(os.path.join(runs.checkpoint_dir(str(workdir)),
                                                 f"ckpt-{step}"))
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if "model_variables" in name or "optimizer" in name}


def _temp_dir_of(process):
  marker = "Not the chief: writing checkpoints, summaries and the export to "
  line = next(line for line in process.text().splitlines() if marker in line)
  return line.split(marker, 1)[1].split(" (deleted at exit)")[0]


def _wait_for_step(workdir, step, processes, timeout=900):
  """Waits until the chief has logged training step `step`."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if any(r["step"] >= step for r in _records(workdir)):
      return
    for p in processes:
      assert p.popen.poll() is None, f"{p.log} ended early:\n{p.text()[-3000:]}"
    time.sleep(0.2)
  raise AssertionError(f"step {step} not reached in {timeout} s")


def test_two_workers_train_like_one_process_with_two_devices(tmp_path):
  """Same flags and seed: 2 workers with one CPU each vs 1 process with 2 logical CPUs. The
  losses of every logged step and the variables of every checkpoint agree; only the chief's
  workdir is written (the export too), the other worker's temporary directory is gone."""
  chief_dir, other_dir, one_dir = tmp_path / "chief", tmp_path / "other", tmp_path / "one"
  flags = ["--train_steps=4"]
  workers = _workers(tmp_path, "w", [chief_dir, other_dir], flags + ["--export=true"])
  one = _Process(["--logical_cpus=2", *TINY_FLAGS, "--strategy=mirrored",
                  f"--workdir={one_dir}", *flags], str(tmp_path / "one.log"), _env())
  assert _wait_all(workers + [one]) == [0, 0, 0], [p.text()[-3000:] for p in workers + [one]]
  assert "with 2 replica(s) (mirrored)" in one.text()
  assert "with 2 replica(s) (multi_worker)" in workers[0].text()

  got, want = _records(chief_dir), _records(one_dir)
  assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 4]
  for a, b in zip(got, want):
    for key in ("loss", "reconstruction", "kl_z", "kl_y", "kl_memory"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  assert got[0]["loss"] != got[1]["loss"]  # it trained
  assert _checkpoint_steps(chief_dir) == _checkpoint_steps(one_dir) == [2, 4]
  for step in (2, 4):
    a, b = _variables(chief_dir, step), _variables(one_dir, step)
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
      np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # Only the chief writes: nothing in the other worker's workdir, its temporary directory
  # (outside both workdirs) deleted; one writer of each file in the chief's.
  assert not other_dir.exists()
  assert tf.saved_model.contains_saved_model(runs.export_dir(str(chief_dir)))
  loaded = tf.saved_model.load(runs.export_dir(str(chief_dir)))
  b = _variables(one_dir, 4)
  exported = sorted(float(np.sum(v.numpy())) for v in loaded.model_variables)
  saved = sorted(float(np.sum(v)) for n, v in b.items() if "model_variables" in n)
  np.testing.assert_allclose(exported, saved, rtol=1e-5, atol=1e-6)  # the final weights
  temp = _temp_dir_of(workers[1])
  assert not os.path.exists(temp) and str(tmp_path) not in temp
  assert len(os.listdir(chief_dir / "train")) == 1
  assert [r["step"] for r in _records(chief_dir)] == [2, 4]


# Worker 1's kill is in the default suite (issue 14); the chief's (which hosts the
# coordination service) is slow.
@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_a_killed_worker_stops_the_other_in_bounded_time_and_a_rerun_resumes(tmp_path,
                                                                            victim):
  """kill -9 of worker 1, or of the chief (which hosts the coordination service): the
  survivor exits within LOST_WORKER_BOUND with one clear error line; re-running both
  commands resumes from the chief's last checkpoint."""
  workdir = tmp_path / "run"
  workers = _workers(tmp_path, "a", [workdir] * 2, ["--train_steps=100000"])
  _wait_for_step(workdir, 6, workers)
  workers[victim].popen.send_signal(signal.SIGKILL)
  killed = time.monotonic()
  survivor = workers[1 - victim]
  code = survivor.wait(timeout=300)
  elapsed = time.monotonic() - killed
  print(f"worker {1 - victim} exited {elapsed:.1f} s after the kill of worker {victim}")
  assert code == 1, survivor.text()[-3000:]
  assert elapsed < LOST_WORKER_BOUND, (elapsed, survivor.text()[-3000:])
  last = survivor.last_line()
  assert last.startswith(f"train.py: error: Multi-worker training stopped on worker "
                         f"{1 - victim} at step "), last
  assert "Re-run every worker's command to resume from the last checkpoint" in last
  assert "Traceback" not in survivor.text()
  workers[victim].wait()
  saved = _checkpoint_steps(workdir)[-1]
  assert saved >= 4  # ckpt-6 may not have been written yet at the kill
  trained = max(r["step"] for r in _records(workdir))

  resumed = _workers(tmp_path, "b", [workdir] * 2, [f"--train_steps={saved + 2}"])
  assert _wait_all(resumed) == [0, 0], [p.text()[-3000:] for p in resumed]
  assert f"Resumed from {runs.checkpoint_dir(str(workdir))}/ckpt-{saved} at step {saved}" in (
      resumed[0].text())
  assert f"Resumed at step {saved} from the chief's checkpoint." in resumed[1].text()
  assert _checkpoint_steps(workdir)[-1] == saved + 2
  steps = [r["step"] for r in _records(workdir)]
  assert steps[-1] == saved + 2 and steps[-2] == trained  # the second run's only record


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  workers = _workers(tmp_path, "a", [workdir] * 2,
                     ["--train_steps=100000", "--checkpoint_every=1000"])
  _wait_for_step(workdir, 4, workers)
  workers[1].popen.send_signal(signal.SIGTERM)
  assert _wait_all(workers, timeout=300) == [143, 143], [p.text()[-3000:] for p in workers]
  stopped = [int(re.search(r"Interrupted at step (\d+): saving a checkpoint", p.text())[1])
             for p in workers]
  assert stopped[0] == stopped[1] >= max(r["step"] for r in _records(workdir)) >= 4
  assert _checkpoint_steps(workdir) == [stopped[0]]  # the only one (--checkpoint_every=1000)
  for p in workers:
    assert "Interrupted by SIGTERM" in p.text()
  assert not os.path.exists(_temp_dir_of(workers[1]))


@pytest.mark.slow
def test_a_stuck_worker_times_out_the_collectives(tmp_path):
  """Worker 1 stops working but stays alive (its heartbeats go on): with
  --collective_timeout_seconds the chief's next collective fails after that long."""
  # Long enough for the workers' different start-up times (a collective waits for all).
  workdir, timeout = tmp_path / "run", 30
  flags = ["--train_steps=100000", f"--collective_timeout_seconds={timeout}"]
  workers = _workers(tmp_path, "a", [workdir] * 2, flags,
                     helper_flags=((), ("--stall_at_step=4", "--stall_seconds=600")))
  try:
    _wait_for_step(workdir, 4, workers)
    while "STALL" not in workers[1].text():
      time.sleep(0.2)
    stalled = float(workers[1].text().split("STALL ", 1)[1].split()[0])
    assert workers[0].wait(timeout=300) == 1, workers[0].text()[-3000:]
    elapsed = time.time() - stalled
    print(f"worker 0 exited {elapsed:.1f} s after worker 1 stalled")
    assert timeout - 1 < elapsed < timeout + LOST_WORKER_BOUND, elapsed
    last = workers[0].last_line()
    assert "Multi-worker training stopped on worker 0 at step 4" in last, last
    assert "DeadlineExceededError" in last, last
  finally:
    workers[1].popen.kill()
