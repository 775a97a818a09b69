"""Tests of kanerva_tf.evaluate_run (run_evaluation, format_summary) and eval.py.

Run directories are built by hand in tmp_path: config.json and one checkpoint of a tiny untrained
model at step 7, in the layout of `kanerva_tf.runs` ({model_variables, step}). Data:
`tfds.testing.mock_data` with synthetic Omniglot-like pages (white page, black strokes; label =
position of a bar), so episodes with 2 or 4 classes can be drawn offline.
mock_data patches TFDS only inside this process, so `eval.py` runs end to end here by parsing
flags into a fresh `FlagValues` and calling its `main` in-process; subprocesses check only
what happens before any data is read (bad flags, missing run directory; these exit before
TensorFlow is imported), plus one end-to-end smoke run of `python eval.py` on a slice of the real
prepared Omniglot when `../shared/tfds` exists (skipped otherwise).

Shapes: B batch of episodes, T episode length, H W D image height/width/depth; k importance
samples.
"""

import contextlib
import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app
from absl import flags

import kanerva_tf as kt
from kanerva_tf import data
from kanerva_tf import evaluate_run
from kanerva_tf import evaluation
from kanerva_tf import runs

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(code_size=6, memory_size=5, address_size=4, num_filters=4, y_size=3,
            mlp_hidden_size=8, episode_length=4)
OMNIGLOT_TINY = kt.ModelConfig(image_shape=(28, 28, 1), **TINY)
NUM_CLASSES, PER_CLASS = 6, 10


def _real_tfds_dir():
  env = os.environ.get("KANERVA_TFDS_DIR")
  return Path(env) if env else ROOT.parent / "shared" / "tfds"


# ----------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=1)
def _pages():
  """uint8 [60, 105, 105, 3] white pages with black ink, int64 labels [60] (label = i % 6)."""
  rng = np.random.default_rng(0)
  n = NUM_CLASSES * PER_CLASS
  labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
  pages = np.full((n, 105, 105, 3), 255, np.uint8)
  for i, label in enumerate(labels):
    pages[i, 12 * label + 10:12 * label + 18, 20:85] = 0
    r, c = rng.integers(0, 97, size=2)
    pages[i, r:r + 8, c:c + 8] = 0
  return pages, labels


def _as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  del self, split, decoders, read_config, kwargs
  pages, labels = _pages()
  return tf.data.Dataset.from_tensor_slices({"image": pages, "label": labels})


@contextlib.contextmanager
def mocked_omniglot():
  data.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=len(_pages()[1]), as_dataset_fn=_as_dataset,
                                policy=tfds.testing.MockPolicy.USE_CODE):
      yield
  finally:
    data.clear_cache()


def _make_run(workdir, model_type, config=OMNIGLOT_TINY, dataset="omniglot"):
  """A run directory: config.json and one checkpoint (step 7) of an untrained model."""
  runs.save_run_config(str(workdir), {
      "model_type": model_type, "model": config.to_dict(),
      "data": {"dataset": dataset, "data_dir": None, "image_size": None, "binarize": None,
               "grayscale": None},
      "train": {}})
  model = runs.build_model(model_type, config)
  model(tf.zeros((1, 2) + config.image_shape))
  ckpt = tf.train.Checkpoint(model_variables=runs.checkpointed_variables(model),
                             step=tf.Variable(7, dtype=tf.int64))
  tf.train.CheckpointManager(ckpt, runs.checkpoint_dir(str(workdir)), max_to_keep=3).save()
  return model


# ----------------------------------------------------------------------------- run_evaluation
def _check_eval_json(out_dir, result, model_type):
  with open(out_dir / "eval.json") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(result))
  assert saved["step"] == 7 and saved["model_type"] == model_type
  assert saved["dataset"] == "omniglot" and saved["split"] == "test"
  bound = saved["bound"]
  for key, value in bound.items():
    assert np.isfinite(value), (key, value)
  terms = ["reconstruction", "kl_z"] + (["kl_y"] if model_type == "kanerva" else [])
  np.testing.assert_allclose(bound["loss"], sum(bound[k] for k in terms), rtol=1e-5)
  return saved


def test_run_evaluation_kanerva(tmp_path, check_png):
  workdir, out_dir = tmp_path / "run", tmp_path / "out"
  model = _make_run(workdir, "kanerva")
  with mocked_omniglot():
    result = evaluate_run.run_evaluation(
        str(workdir), str(out_dir), num_batches=2, batch_size=3, seed=1, importance_samples=2,
        episode_sizes=(4, 8), class_counts=(2, 12, "all"), fidelity_episodes=2,
        command_line={"argv": ["x"]})
    # The restored weights are the saved ones: the saved model, on the same episodes with
    # the same seed, gives the same bound.
    ds = data.episode_dataset("omniglot", "test", batch_size=3, episode_length=4, seed=1,
                              repeat=False, num_episodes=6)
    original = evaluation.evaluate_bound(model, ds, seed=1)
  saved = _check_eval_json(out_dir, result, "kanerva")
  np.testing.assert_allclose(saved["bound"]["loss"], original["loss"], rtol=1e-6)
  assert -1 <= saved["addressing"]["w_cos_other"] <= 1
  assert saved["bound"]["num_episodes"] == 6 and saved["episode_length"] == 4
  assert saved["bound"]["importance_samples"] == 2 and "iw_loss" in saved["bound"]
  assert "bits_per_dim" not in saved["bound"]
  sweep = saved["sweep"]
  assert sweep["episode_sizes"] == [4, 8] and sweep["class_counts"] == ["2", "12", "all"]
  assert all(np.isfinite(sweep["loss"][c]).all() for c in ("2", "all"))
  assert sweep["loss"]["12"] == [None, None] and "12" in sweep["skipped"]
  assert sweep["num_episodes"]["all"] == [6, 3]  # the same 24 images at every T
  fidelity = saved["generation_fidelity"]
  assert fidelity["class_counts"] == ["2", "12", "all"] and fidelity["conditioned"]
  assert fidelity["conditioning_size"] == evaluate_run.CONDITIONING_SIZE == 12
  assert saved["conditioning_size"] == 12  # Omniglot's default (Fig. 4)
  assert fidelity["num_episodes"] == 2 and fidelity["iterations"] == [0, 2, 4, 6, 8]
  # 6 mock classes: no episode of 12 classes; 12 images of 'all' classes leave too few other
  # classes to match theirs.
  assert set(fidelity["results"]) == {"2"} and set(fidelity["skipped"]) == {"12", "all"}
  assert all(0 <= v <= 1 for v in fidelity["results"]["2"]["nn_in_conditioning"])
  assert any("generation_fidelity: 12 classes skipped" in n for n in saved["notes"])
  assert set(saved["figures"]) == {"reconstructions", "generation", "denoising",
                                   "interpolation", "bound_vs_episode_size"}
  for file in saved["figures"].values():
    check_png(out_dir / file)
  assert any("12 classes skipped" in n for n in saved["notes"])
  assert saved["command_line"] == {"argv": ["x"]}
  assert saved["checkpoint"].endswith("ckpt-1")


def test_run_evaluation_vae_without_sweep(tmp_path, check_png):
  workdir = tmp_path / "run"
  _make_run(workdir, "vae")
  with mocked_omniglot():
    result = evaluate_run.run_evaluation(str(workdir), num_batches=1, batch_size=2,
                                       episode_length=5, episode_sizes=(), fidelity_episodes=2)
  out_dir = workdir / "eval"  # the default
  saved = _check_eval_json(out_dir, result, "vae")
  assert saved["sweep"] is None and saved["episode_length"] == 5
  assert saved["addressing"] is None
  assert set(saved["figures"]) == {"reconstructions", "generation"}
  for file in saved["figures"].values():
    check_png(out_dir / file)
  assert any("skipped for the VAE" in n for n in saved["notes"])
  fidelity = saved["generation_fidelity"]
  # 6 mock classes: 4 classes leave only 2 others to match them.
  assert not fidelity["conditioned"] and set(fidelity["results"]) == {"2"}
  assert "4" in fidelity["skipped"]
  assert any("the chance reference" in n for n in saved["notes"])


def test_run_evaluation_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a kanerva_tf training run directory"):
    evaluate_run.run_evaluation(str(tmp_path / "missing"), num_batches=1)
  with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
    evaluate_run.run_evaluation(str(tmp_path), batch_size=0)
  with pytest.raises(ValueError, match="class count"):
    evaluate_run.run_evaluation(str(tmp_path), class_counts=("two",))
  workdir = tmp_path / "run"
  _make_run(workdir, "vae", config=kt.ModelConfig(image_shape=(8, 8, 1), **TINY))
  with mocked_omniglot(), pytest.raises(ValueError, match=r"images of shape \(28, 28, 1\)"):
    evaluate_run.run_evaluation(str(workdir), num_batches=1)


@pytest.mark.slow
def test_run_evaluation_conditioning_size(tmp_path):
  """The images written for the generation figure and its fidelity: the dataset's default
  (24 for CIFAR-10, Fig. 5; 12 otherwise) or the argument; a bad value fails first."""
  assert evaluate_run.CONDITIONING_SIZES["cifar10"] == 24
  workdir = tmp_path / "run"
  _make_run(workdir, "kanerva")
  kwargs = dict(num_batches=1, batch_size=2, seed=1, episode_sizes=(), figures=False,
                class_counts=(2,), fidelity_episodes=1)
  with mocked_omniglot():
    result = evaluate_run.run_evaluation(str(workdir), str(tmp_path / "a"), **kwargs,
                                         conditioning_size=4)
    with pytest.raises(ValueError, match="conditioning_size"):
      evaluate_run.run_evaluation(str(workdir), str(tmp_path / "b"), **kwargs,
                                  conditioning_size=0)
  assert result["conditioning_size"] == 4
  assert result["generation_fidelity"]["conditioning_size"] == 4


def test_run_evaluation_model_overrides(tmp_path):
  """A read switch can be overridden at evaluation (mean-field reads vs Appendix F's)."""
  workdir = tmp_path / "run"
  _make_run(workdir, "kanerva")
  kwargs = dict(num_batches=1, batch_size=2, seed=1, episode_sizes=(), figures=False,
                fidelity=False)
  with mocked_omniglot():
    plain = evaluate_run.run_evaluation(str(workdir), str(tmp_path / "a"), **kwargs)
    other = evaluate_run.run_evaluation(str(workdir), str(tmp_path / "b"), **kwargs,
                                        model_overrides={"distribution_memory": True})
  assert plain["generation_fidelity"] is None
  assert plain["model_overrides"] == {} and other["model_overrides"] == {
      "distribution_memory": True}
  assert abs(plain["bound"]["kl_z"] - other["bound"]["kl_z"]) > 1e-4
  with open(tmp_path / "b" / "eval.json") as f:
    assert json.load(f)["model_overrides"] == {"distribution_memory": True}


# ----------------------------------------------------------------------------- eval.py
@functools.lru_cache(maxsize=1)
def _eval_script():
  spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_eval_main_in_process(tmp_path, capsys):
  workdir = tmp_path / "run"
  _make_run(workdir, "kanerva")
  script = _eval_script()
  fv = flags.FlagValues()
  script.define_flags(fv)
  fv(["eval.py", f"--workdir={workdir}", "--num_batches=1", "--batch_size=2", "--nofigures",
      "--episode_sizes=4", "--class_counts=2,all", "--importance_samples=2", "--seed=5",
      "--fidelity_episodes=2"])
  with mocked_omniglot():
    script.main(["eval.py"], fv)
  printed = capsys.readouterr().out
  assert "kanerva at step 7" in printed and "importance-weighted NLL (k=2)" in printed
  assert "one-shot generation" in printed and "2 classes: nn_in_conditioning" in printed
  with open(workdir / "eval" / "eval.json") as f:
    saved = json.load(f)
  assert saved["figures"] == {} and saved["seed"] == 5
  assert saved["command_line"]["flags"]["class_counts"] == ["2", "all"]
  assert saved["sweep"]["class_counts"] == ["2", "all"]
  assert saved["generation_fidelity"]["num_episodes"] == 2
  assert saved["command_line"]["flags"]["generation_fidelity"] is True
  fv(["eval.py", f"--workdir={workdir}", "--num_batches=1", "--batch_size=2", "--nofigures",
      "--episode_sizes=", "--nogeneration_fidelity", f"--out_dir={tmp_path / 'off'}"])
  with mocked_omniglot():
    script.main(["eval.py"], fv)
  assert "one-shot generation" not in capsys.readouterr().out
  with open(tmp_path / "off" / "eval.json") as f:
    assert json.load(f)["generation_fidelity"] is None


def test_eval_flag_defaults_are_the_library_defaults():
  """eval.py spells its defaults out (it parses flags before TensorFlow is imported); they
  are those of `run_evaluation`."""
  import inspect  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  _eval_script().define_flags(fv)
  defaults = {k: p.default for k, p in inspect.signature(
      evaluate_run.run_evaluation).parameters.items()}
  assert [int(t) for t in fv["episode_sizes"].default] == list(defaults["episode_sizes"])
  assert [None if c == "all" else int(c) for c in fv["class_counts"].default] == list(
      defaults["class_counts"])
  for name in ("batch_size", "seed", "importance_samples", "figures", "split",
               "fidelity_episodes"):
    assert fv[name].default == defaults[name], name
  assert fv["generation_fidelity"].default == defaults["fidelity"]


def test_eval_main_without_checkpoint_is_a_usage_error(tmp_path):
  runs.save_run_config(str(tmp_path), {"model_type": "vae", "model": OMNIGLOT_TINY.to_dict(),
                                       "data": {"dataset": "omniglot"}})
  script = _eval_script()
  fv = flags.FlagValues()
  script.define_flags(fv)
  fv(["eval.py", f"--workdir={tmp_path}"])
  with pytest.raises(app.UsageError, match="No checkpoint in"):
    script.main(["eval.py"], fv)


def _run_script(*args, timeout=120):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], capture_output=True,
                        text=True, timeout=timeout, cwd=str(ROOT), env=env)


@pytest.mark.parametrize("args, message", [
    (["--batch_size=0"], "flag --batch_size=0: 0 is not a positive integer"),
    (["--importance_samples=-1"], "flag --importance_samples=-1: -1 is not a non-negative"),
    (["--episode_sizes=16,x"], "--episode_sizes must be a comma-separated list"),
    (["--class_counts=2,0"], "--class_counts must be a comma-separated list"),
    (["--episode_length=0"], "flag --episode_length=0: 0 is not a positive integer"),
    (["--num_batches=x"], "flag --num_batches=x: invalid literal"),
    pytest.param([], "--workdir is required", marks=pytest.mark.slow),  # imports TensorFlow
])
def test_eval_script_rejects_bad_flags(tmp_path, args, message):
  if args:
    args = [f"--workdir={tmp_path}"] + args
  proc = _run_script(*args)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_eval_script_missing_workdir(tmp_path):
  proc = _run_script(f"--workdir={tmp_path / 'nope'}")
  assert proc.returncode != 0
  assert "is not a training run directory: it has no config.json" in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _real_tfds_dir().is_dir(), reason="../shared/tfds (prepared TFDS data) "
                    "is absent; set KANERVA_TFDS_DIR to run this test")
def test_eval_script_reports_a_damaged_checkpoint_in_one_line(tmp_path):
  """The run's only checkpoint is truncated: one line naming its files, exit status 1;
  --verbosity=1 adds the traceback. A usage error is one line too, not the usage text."""
  workdir = tmp_path / "run"
  _make_run(workdir, "vae")
  prefix = tf.train.latest_checkpoint(runs.checkpoint_dir(str(workdir)))
  with open(prefix + ".data-00000-of-00001", "r+b") as f:
    f.truncate(10)
  args = [f"--workdir={workdir}", f"--data_dir={_real_tfds_dir()}", "--nofigures"]
  for extra, traceback in [([], False), (["--verbosity=1"], True)]:
    proc = _run_script(*args, *extra)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"eval.py: error: No checkpoint in {workdir / 'checkpoints'} "
                           "restores, all 1 are damaged"), last
    assert "ckpt-1.data-00000-of-00001, ckpt-1.index" in last
    assert ("Traceback (most recent call last)" in proc.stderr) == traceback
  assert not (workdir / "eval").exists()
  proc = _run_script(f"--workdir={tmp_path / 'nope'}")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"eval.py: error: --workdir={tmp_path / 'nope'} is not a training run directory: it has "
      "no config.json (train.py writes it when a run starts).")


@pytest.mark.slow
@pytest.mark.parametrize("download", [True, False])
def test_eval_script_without_the_data_fails_fast_with_a_clear_error(download, tmp_path):
  """The run's data directory is empty and there is no internet (requests go to a closed local
  port): --download fails in seconds, --nodownload at once, with one usage error naming the
  dataset and the directory; --data_dir overrides the run's directory."""
  workdir, saved_dir, data_dir = tmp_path / "run", tmp_path / "saved", tmp_path / "tfds"
  for d in (workdir, saved_dir, data_dir):
    d.mkdir()
  (workdir / "config.json").write_text(json.dumps(
      {"model_type": "kanerva", "data": {"dataset": "omniglot", "data_dir": str(saved_dir)}}))
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
  env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
  env.update({k: proxy for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")},
             TF_CPP_MIN_LOG_LEVEL="2")
  start = time.monotonic()
  proc = subprocess.run(
      [sys.executable, str(ROOT / "eval.py"), f"--workdir={workdir}", f"--data_dir={data_dir}",
       "--download" if download else "--nodownload"],
      capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=env)
  assert time.monotonic() - start < 60  # TensorFlow's import included
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert f"dataset 'omniglot' is not prepared in data_dir {data_dir}." in proc.stderr
  assert ("Downloading it failed: " if download else "Downloading is off") in proc.stderr
  assert "tfds build omniglot" in proc.stderr
  assert not list(data_dir.iterdir()) and not (workdir / "eval").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _real_tfds_dir().is_dir(), reason="../shared/tfds (prepared TFDS data) "
                    "is absent; set KANERVA_TFDS_DIR to run this test")
def test_eval_script_on_real_omniglot(tmp_path):
  workdir = tmp_path / "run"
  _make_run(workdir, "kanerva")
  proc = _run_script(f"--workdir={workdir}", f"--data_dir={_real_tfds_dir()}",
                     "--split=test[:64]", "--num_batches=1", "--batch_size=2", "--nofigures",
                     "--episode_sizes=", "--fidelity_episodes=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "kanerva at step 7 on omniglot/test[:64]" in proc.stdout
  with open(workdir / "eval" / "eval.json") as f:
    saved = json.load(f)
  assert saved["bound"]["num_episodes"] == 2 and np.isfinite(saved["bound"]["loss"])
  assert saved["generation_fidelity"]["num_episodes"] == 2
