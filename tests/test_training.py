"""Tests of kanerva_tf.training and train.py: end to end on mock data, resume, NaN, MirroredStrategy."""

import dataclasses
import errno
import importlib.util
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

import kanerva_tf as kt
from kanerva_tf import config as config_lib
from kanerva_tf import data as data_lib
from kanerva_tf import distribute
from kanerva_tf import model as model_lib
from kanerva_tf import runs
from kanerva_tf import training

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = pathlib.Path(os.environ.get(
    "KANERVA_TFDS_DIR", REPO.parent / "shared" / "tfds"))
TINY = kt.ModelConfig.omniglot(code_size=6, memory_size=5, address_size=4, num_filters=4,
                               y_size=3, mlp_hidden_size=8, episode_length=4)


def _train_config(**overrides):
  values = dict(dataset="omniglot", train_steps=4, batch_size=2, steps_per_call=2,
                log_every=2, checkpoint_every=2, eval_every=4, eval_batches=1, image_every=4,
                strategy="default", export=False, learning_rate=1e-3)
  values.update(overrides)
  return training.TrainConfig(**values)


def _metrics(workdir):
  with open(runs.metrics_path(workdir)) as f:
    return [json.loads(line) for line in f]


def _run_python(code, timeout=600, env=None):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, timeout=timeout,
                        capture_output=True, text=True, env={**os.environ, **(env or {})})


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["kanerva", "vae"])
def test_train_checkpoint_resume_and_export(model_type, mock_omniglot, tmp_path):
  workdir = str(tmp_path / model_type)
  result = training.train_and_evaluate(TINY, _train_config(model_type=model_type), workdir)
  assert result["step"] == 4
  assert np.isfinite(result["train"]["loss"]) and np.isfinite(result["eval"]["loss"])
  manager_steps = sorted(int(p.split("-")[-1]) for p in
                         tf.train.get_checkpoint_state(runs.checkpoint_dir(workdir))
                         .all_model_checkpoint_paths)
  assert manager_steps == [2, 4]
  records = _metrics(workdir)
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
  assert [r["step"] for r in records if r["split"] == "test"] == [4]
  assert os.listdir(os.path.join(workdir, "train")) and os.listdir(os.path.join(workdir, "test"))
  saved = runs.load_run_config(workdir)
  assert saved["model_type"] == model_type and saved["model"] == json.loads(
      json.dumps(TINY.to_dict()))

  # Resume: continues from step 4 to 6 and exports the SavedModel.
  result = training.train_and_evaluate(TINY, _train_config(model_type=model_type, train_steps=6,
                                                           export=True), workdir)
  assert result["step"] == 6
  assert [r["step"] for r in _metrics(workdir) if r["split"] == "train"] == [2, 4, 6]
  model, _, step = runs.restore_model(workdir)
  assert step == 6
  x = next(iter(data_lib.episode_dataset("omniglot", "test", batch_size=2, episode_length=4,
                                         seed=3))).numpy()
  want = model.reconstruct(x, seed=(1, 2)).numpy()
  np.save(tmp_path / "x.npy", x)
  proc = _run_python(f"""
      import numpy as np, tensorflow as tf, sys
      assert "kanerva_tf" not in sys.modules
      loaded = tf.saved_model.load({runs.export_dir(workdir)!r})
      x = np.load({str(tmp_path / "x.npy")!r})
      out = loaded.signatures["reconstruct"](episode=tf.constant(x),
                                             seed=tf.constant([1, 2], tf.int32))
      np.save({str(tmp_path / "got.npy")!r}, out["images"].numpy())
      assert "kanerva_tf" not in sys.modules
      """)
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "got.npy"), want, atol=1e-5)


@pytest.mark.slow
def test_nan_loss_never_overwrites_a_good_checkpoint(mock_omniglot, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(TINY, _train_config(train_steps=2, eval_every=0, image_every=0),
                              workdir)
  ckpt_dir = runs.checkpoint_dir(workdir)
  before = {p: os.path.getmtime(os.path.join(ckpt_dir, p)) for p in os.listdir(ckpt_dir)}
  original_call = model_lib.KanervaMachine.call

  # seed named: Keras refuses a **kwargs argument that mixes tensors (the seed) and Python
  # values (the step's check_inputs / diagnostics flags).
  def nan_call(self, *args, seed=None, **kwargs):
    out = original_call(self, *args, seed=seed, **kwargs)
    return {k: v * np.nan for k, v in out.items()}

  monkeypatch.setattr(model_lib.KanervaMachine, "call", nan_call)
  with pytest.raises(FloatingPointError, match=r"Non-finite.*ckpt-2 is kept"):
    training.train_and_evaluate(TINY, _train_config(train_steps=6, eval_every=0, image_every=0),
                                workdir)
  after = {p: os.path.getmtime(os.path.join(ckpt_dir, p)) for p in os.listdir(ckpt_dir)}
  assert after == before
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-2")


def test_interrupt_saves_a_checkpoint_and_resume_continues(mock_omniglot, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  original = training._append_metrics

  def interrupt_at_step_4(workdir_, record):
    original(workdir_, record)
    if record["step"] == 4:
      raise KeyboardInterrupt()

  monkeypatch.setattr(training, "_append_metrics", interrupt_at_step_4)
  config = _train_config(train_steps=8, log_every=2, checkpoint_every=100, eval_every=0,
                         image_every=0, steps_per_call=2)
  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(TINY, config, workdir)
  assert tf.train.latest_checkpoint(runs.checkpoint_dir(workdir)).endswith("ckpt-4")
  monkeypatch.setattr(training, "_append_metrics", original)
  result = training.train_and_evaluate(TINY, config, workdir)
  assert result["step"] == 8
  assert [r["step"] for r in _metrics(workdir)] == [2, 4, 6, 8, 8]
  # The same workdir with another model is refused before any work.
  other = kt.ModelConfig.from_dict({**TINY.to_dict(), "memory_size": 7})
  with pytest.raises(ValueError, match=r"different model \(memory_size: saved 5, now 7\)"):
    training.train_and_evaluate(other, config, workdir)


def test_data_and_model_shapes_must_agree(mock_omniglot, tmp_path):
  cifar_like = kt.ModelConfig.from_dict({**TINY.to_dict(), "image_shape": (32, 32, 3)})
  with pytest.raises(ValueError, match=r"\(28, 28, 1\).*expects \(32, 32, 3\)"):
    training.train_and_evaluate(cifar_like, _train_config(), str(tmp_path / "a"))
  gaussian = kt.ModelConfig.from_dict({**TINY.to_dict(), "likelihood": "bernoulli"})
  with pytest.raises(ValueError, match="needs binarized images"):
    training.train_and_evaluate(gaussian, _train_config(binarize=False), str(tmp_path / "b"))


def test_gaussian_test_records_have_bits_per_dim_and_the_pixel_scale_range(mock_omniglot,
                                                                          tmp_path):
  """Issue 13: every evaluation of a Gaussian-likelihood run reports the dequantised bound in
  bits/dim and the range of p(x|z)'s per-pixel scale (collapse or blow-up would show)."""
  gaussian = kt.ModelConfig.from_dict({**TINY.to_dict(), "likelihood": "gaussian"})
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(gaussian, _train_config(binarize=False, image_every=0), workdir)
  test = [r for r in _metrics(workdir) if r["split"] == "test"]
  assert len(test) == 1
  record = test[0]
  assert record["bits_per_dim"] > 0
  assert 1e-3 < record["pixel_scale_min"] <= record["pixel_scale_median"] <= record[
      "pixel_scale_max"] < 1e3
  bernoulli = str(tmp_path / "bernoulli")
  training.train_and_evaluate(TINY, _train_config(image_every=0), bernoulli)
  assert not any(k.startswith("pixel_scale") or k == "bits_per_dim"
                 for r in _metrics(bernoulli) for k in r)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model_type="gan"), "model_type must be one of"),
    (dict(strategy="tpu"), "strategy must be one of"),
    (dict(batch_size=0), "batch_size must be a positive int; got 0"),
    (dict(learning_rate=3.0), "learning_rate must be a float in"),
    (dict(eval_every=-1), "eval_every must be an int >= 0"),
    (dict(kl_y_warmup_steps=-5), "kl_y_warmup_steps must be an int >= 0"),
    (dict(model_type="vae", kl_y_warmup_steps=10), "kl_y_warmup_steps needs model_type"),
    (dict(download="yes"), "download must be True or False; got 'yes'"),
    (dict(precision="float16"), r"precision must be one of \('float32', 'bfloat16'\); got "
                                "'float16'"),
])
def test_bad_train_config_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _train_config(**kwargs)


def test_kl_y_warmup_weighs_kl_y_in_the_training_loss():
  """At step 0 of a warm-up the training loss is reconstruction + KL(z); the model's own
  eq. 12 loss adds KL(y)."""
  model = kt.KanervaMachine(TINY)
  x = tf.constant((np.random.default_rng(0).random((2, 4, 28, 28, 1)) < 0.2).astype(np.float32))
  model(x)
  optimizer = keras.optimizers.SGD(0.)  # no update: the weights stay the same
  optimizer.build(model.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  keys = ("loss", "reconstruction", "kl_y", "kl_z")
  train = training.make_train_function(tf.distribute.get_strategy(), model, optimizer, step,
                                       keys=keys, global_batch_size=2, seed=3,
                                       kl_y_warmup_steps=10)
  out = {k: float(v) for k, v in train(iter(tf.data.Dataset.from_tensors(x).repeat()),
                                       tf.constant(1)).items()}
  assert out["kl_y"] > 1e-3
  np.testing.assert_allclose(out["loss"], out["reconstruction"] + out["kl_z"], rtol=1e-5)
  full = model(x, training=True, seed=training.replica_seed(3, 0, 0, 1))
  np.testing.assert_allclose(float(full["loss"]), out["loss"] + out["kl_y"], rtol=1e-5)


def _spy_train_calls(monkeypatch):
  """Records the `diagnostics` argument and the result keys of every training call of
  `train_and_evaluate`: a list of (diagnostics, sorted keys)."""
  calls, make = [], training.make_train_function

  def spying_make(*args, **kwargs):
    train_calls = make(*args, **kwargs)

    def spy(iterator, num_steps, diagnostics=True):
      out = train_calls(iterator, num_steps, diagnostics=diagnostics)
      calls.append((diagnostics, sorted(out)))
      return out
    return spy
  monkeypatch.setattr(training, "make_train_function", spying_make)
  return calls


def test_kl_memory_only_on_the_calls_whose_metrics_are_logged(mock_omniglot, tmp_path,
                                                              monkeypatch):
  calls = _spy_train_calls(monkeypatch)
  workdir = str(tmp_path / "run")
  result = training.train_and_evaluate(
      TINY, _train_config(train_steps=5, steps_per_call=1, log_every=2, checkpoint_every=0,
                          eval_every=0, image_every=0), workdir)
  # Steps 2, 4 (log_every) and 5 (the last) are logged; 1 and 3 skip the diagnostics.
  assert [d for d, _ in calls] == [False, True, False, True, True]
  full = ["kl_memory", "kl_y", "kl_z", "loss", "reconstruction"]
  assert [k for _, k in calls] == [[k for k in full if k != "kl_memory"], full,
                                   [k for k in full if k != "kl_memory"], full, full]
  train = [r for r in _metrics(workdir) if r["split"] == "train"]
  assert [r["step"] for r in train] == [2, 4, 5]
  for record in train:  # the same keys as before, every kl_memory a real value
    assert set(full) <= set(record) and np.isfinite(record["kl_memory"]) and record[
        "kl_memory"] > 0, record
  assert set(full) <= set(result["train"])
  test = [r for r in _metrics(workdir) if r["split"] == "test"]
  assert len(test) == 1 and test[0]["kl_memory"] > 0  # the evaluation reports it


def test_train_function_without_diagnostics_makes_the_same_update():
  x = tf.constant((np.random.default_rng(0).random((2, 4, 28, 28, 1)) < 0.2).astype(np.float32))
  keys = ("loss", "kl_y", "kl_memory")
  results, weights = [], []
  for diagnostics in (True, False):
    keras.utils.set_random_seed(0)
    model = kt.KanervaMachine(TINY)
    model(x)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    train = training.make_train_function(tf.distribute.get_strategy(), model, optimizer,
                                         step, keys=keys, global_batch_size=2, seed=3,
                                         check_inputs=False)
    results.append(train(iter(tf.data.Dataset.from_tensors(x).repeat()), tf.constant(2),
                         diagnostics=diagnostics))
    weights.append(model.get_weights())
  assert set(results[0]) == set(keys) and set(results[1]) == {"loss", "kl_y"}
  assert float(results[0]["kl_memory"]) > 0
  for key in ("loss", "kl_y"):
    np.testing.assert_allclose(results[1][key], results[0][key], rtol=1e-6)
  for a, b in zip(*weights):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad, message", [
    (np.nan, r"kanerva_tf.training: training batch contains NaN or Inf"),
    (2.0, r"training batch values must be in \[0, 1\]; got a value > 1"),
])
def test_a_bad_training_batch_fails_clearly(bad, message, mock_omniglot, tmp_path,
                                           monkeypatch):
  """The training step does not check its input (check_inputs=False): the input pipeline
  checks every batch on the host, and a NaN or a value > 1 stops training with the message."""
  original = data_lib.episode_dataset

  def bad_train_batches(name, split, **kwargs):
    ds = original(name, split, **kwargs)
    if split != "train":
      return ds
    return ds.map(lambda x: tf.tensor_scatter_nd_update(
        x, [[0, 0, 3, 3, 0]], tf.constant([bad], tf.float32)))
  monkeypatch.setattr(data_lib, "episode_dataset", bad_train_batches)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    training.train_and_evaluate(TINY, _train_config(train_steps=2, eval_every=0,
                                                    image_every=0), str(tmp_path / "run"))
  # A train function that checks its input itself (the default) rejects it in the model.
  model = kt.KanervaMachine(TINY)
  x = tf.tensor_scatter_nd_update(tf.zeros((2, 4, 28, 28, 1)), [[1, 2, 3, 3, 0]],
                                  tf.constant([bad], tf.float32))
  model(x[:, :1] * 0)
  optimizer = keras.optimizers.Adam(1e-3)
  optimizer.build(model.trainable_variables)
  train = training.make_train_function(tf.distribute.get_strategy(), model, optimizer,
                                       tf.Variable(0, dtype=tf.int64), keys=("loss",),
                                       global_batch_size=2, seed=0)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"KanervaMachine: episode (contains "
                     r"NaN or Inf|values must be in \[0, 1\])"):
    train(iter(tf.data.Dataset.from_tensors(x).repeat()), tf.constant(1), diagnostics=False)


@pytest.mark.parametrize("model_type", ["kanerva", "vae"])
def test_bfloat16_training_has_a_finite_float32_loss(model_type, mock_omniglot, tmp_path,
                                                     monkeypatch):
  models = []
  build = runs.build_model
  monkeypatch.setattr(runs, "build_model",
                      lambda *a, **k: models.append(build(*a, **k)) or models[-1])
  result = training.train_and_evaluate(
      TINY, _train_config(model_type=model_type, train_steps=3, precision="bfloat16",
                          eval_every=0, image_every=0), str(tmp_path / "run"))
  assert result["step"] == 3
  assert all(np.isfinite(v) for v in result["train"].values()), result
  assert np.isfinite(result["eval"]["loss"])
  model, = models
  assert model.precision == "bfloat16" and model.encoder.compute_dtype == "bfloat16"
  saved = runs.load_run_config(str(tmp_path / "run"))
  assert saved["train"]["precision"] == "bfloat16"
  # The checkpoint holds float32 variables: a float32 model restores it.
  restored, _, step = runs.restore_model(str(tmp_path / "run"))
  assert step == 3 and restored.precision == "float32"
  for a, b in zip(restored.get_weights(), model.get_weights()):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resuming_a_run_saved_before_new_model_fields_were_added(mock_omniglot, tmp_path):
  """A config.json without fields added to ModelConfig later (they take their defaults), or
  with fields retired since at their neutral values, is the same model, not a different one."""
  workdir = tmp_path / "run"
  cfg = _train_config(train_steps=2, eval_every=0, image_every=0)
  training.train_and_evaluate(TINY, cfg, str(workdir))
  saved = runs.load_run_config(str(workdir))
  for field in ("kernel_initializer", "read_posterior"):
    del saved["model"][field]
  saved["model"].update(reuse_write_address=False, prior_loc_stddev=0.0)
  runs.save_run_config(str(workdir), saved)
  training.train_and_evaluate(TINY, _train_config(train_steps=4, eval_every=0, image_every=0),
                              str(workdir))
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-4")
  with pytest.raises(ValueError, match="different model"):
    other = kt.ModelConfig(**{**TINY.to_dict(), "kernel_initializer": "he_normal"})
    training.train_and_evaluate(other, _train_config(train_steps=6), str(workdir))


@pytest.mark.slow
def test_a_run_resumes_from_another_data_dir_but_not_other_data(mock_omniglot, tmp_path):
  """Where the data lives is not part of the run: --data_dir=A, then TFDS_DATA_DIR (None)."""
  workdir = str(tmp_path / "run")
  cfg = dict(eval_every=0, image_every=0)
  training.train_and_evaluate(TINY, _train_config(train_steps=2, data_dir="/data/a", **cfg),
                              workdir)
  training.train_and_evaluate(TINY, _train_config(train_steps=4, **cfg), workdir)
  assert tf.train.latest_checkpoint(runs.checkpoint_dir(workdir)).endswith("ckpt-4")
  assert runs.load_run_config(workdir)["data"]["data_dir"] is None  # the latest one
  with pytest.raises(ValueError, match=r"different data \(grayscale: saved None, now True\)"):
    training.train_and_evaluate(TINY, _train_config(train_steps=6, grayscale=True, **cfg),
                                workdir)


# ----------------------------------------------------------------------------- failures
def _quiet(**overrides):
  """A tiny run that only trains and checkpoints (every 2 steps)."""
  return _train_config(**{**dict(eval_every=0, image_every=0), **overrides})


def _warnings(caplog):
  return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.slow
def test_damaged_newest_checkpoint_resumes_from_the_newest_that_restores(
    mock_omniglot, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  ckpt_dir = runs.checkpoint_dir(workdir)
  training.train_and_evaluate(TINY, _quiet(train_steps=4), workdir)
  damaged = os.path.join(ckpt_dir, "ckpt-4")
  data_file = damaged + ".data-00000-of-00001"
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  with caplog.at_level(logging.INFO, logger="absl"):
    result = training.train_and_evaluate(TINY, _quiet(train_steps=6), workdir)
  assert result["step"] == 6
  warnings = _warnings(caplog)
  assert f"Checkpoint {damaged} does not restore (IndexError: Read less bytes" in warnings
  assert "learning rate" not in warnings  # resumed with the same one
  assert "Resumed from" in caplog.text and "ckpt-2 at step 2" in caplog.text
  train_steps = [r["step"] for r in _metrics(workdir) if r["split"] == "train"]
  assert train_steps == [2, 4, 4, 6]  # steps 3-4 trained again
  # Passing step 4 again rewrote ckpt-4: it restores now.
  assert runs.restore_model(workdir, checkpoint=damaged)[2] == 4
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-6")

  # Every checkpoint damaged: one error naming them, before any training; nothing deleted.
  for name in os.listdir(ckpt_dir):
    if ".data-" in name:
      with open(os.path.join(ckpt_dir, name), "r+b") as f:
        f.truncate(10)
  before = sorted(os.listdir(ckpt_dir))
  with pytest.raises(runs.CheckpointError, match=r"No checkpoint in .* restores, all 3 are "
                     r"damaged: .*ckpt-6 \(IndexError.*files: ckpt-6.data-00000-of-00001, "
                     r"ckpt-6.index\)"):
    training.train_and_evaluate(TINY, _quiet(train_steps=8), workdir)
  assert sorted(os.listdir(ckpt_dir)) == before


def test_an_unwritable_workdir_is_refused_before_any_training(mock_omniglot, tmp_path,
                                                              monkeypatch):
  def no_training(*args, **kwargs):
    raise AssertionError("training started")

  monkeypatch.setattr(training, "make_train_function", no_training)
  (tmp_path / "file").write_text("")
  with pytest.raises(OSError, match=r"Cannot write to the run directory .*file/run "
                     r"\(FailedPreconditionError: .*not a directory\); nothing was trained"):
    training.train_and_evaluate(TINY, _quiet(), str(tmp_path / "file" / "run"))
  if os.geteuid() != 0:  # root writes into read-only directories
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(OSError, match="Cannot write to the run directory"):
      training.train_and_evaluate(TINY, _quiet(), str(tmp_path / "ro"))


@pytest.mark.slow
def test_a_changed_learning_rate_on_resume_is_not_silent(mock_omniglot, tmp_path, caplog):
  """The checkpoint restores Adam's learning rate with its other variables: a resumed run
  with another learning_rate keeps the checkpoint's, and says so."""
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(TINY, _quiet(train_steps=2, learning_rate=1e-3), workdir)
  with caplog.at_level(logging.WARNING, logger="absl"):
    training.train_and_evaluate(TINY, _quiet(train_steps=4, learning_rate=5e-4), workdir)
  assert ("resumes with the learning rate 0.001 of its checkpoint, not learning_rate=0.0005"
          in _warnings(caplog))


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["while writing", "before recording"])
def test_a_failing_checkpoint_save_leaves_a_resumable_run(mock_omniglot, tmp_path,
                                                          monkeypatch, failure):
  """The save at step 4 fails (a full disk): while writing its files (a partial temporary
  directory is left), or after writing them but before the state file records them. The
  run re-run continues from a checkpoint that restores and finishes."""
  workdir = str(tmp_path / "run")
  ckpt_dir = runs.checkpoint_dir(workdir)
  disk_full = OSError(errno.ENOSPC, "No space left on device")
  if failure == "while writing":
    original = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
      if checkpoint_number == 4:
        partial = os.path.join(ckpt_dir, "ckpt-4_temp")
        os.makedirs(partial)
        with open(os.path.join(partial, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
          f.write(b"\0" * 100)
        raise disk_full
      return original(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
  else:
    original = tf.train.CheckpointManager._record_state

    def record_state(self):
      if self.latest_checkpoint.endswith("ckpt-4"):
        raise disk_full
      original(self)

    monkeypatch.setattr(tf.train.CheckpointManager, "_record_state", record_state)
  with pytest.raises(OSError, match="No space left on device"):
    training.train_and_evaluate(TINY, _quiet(train_steps=4), workdir)
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-2")
  monkeypatch.undo()
  result = training.train_and_evaluate(TINY, _quiet(train_steps=6), workdir)
  assert result["step"] == 6
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-6")
  assert runs.restore_model(workdir)[2] == 6
  for path in tf.train.get_checkpoint_state(ckpt_dir).all_model_checkpoint_paths:
    runs.restore_model(workdir, checkpoint=path)  # every recorded checkpoint restores


@pytest.mark.slow
def test_a_failing_export_leaves_a_resumable_run(mock_omniglot, tmp_path, monkeypatch):
  """The SavedModel save fails after writing its files: no export, nothing half-written
  left; the re-run trains nothing more and exports the final checkpoint."""
  workdir = str(tmp_path / "run")
  original = tf.saved_model.save

  def failing_save(obj, export_dir, *args, **kwargs):
    original(obj, export_dir, *args, **kwargs)
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(tf.saved_model, "save", failing_save)
  config = _quiet(train_steps=2, export=True)
  with pytest.raises(OSError, match="No space left on device"):
    training.train_and_evaluate(TINY, config, workdir)
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "metrics.jsonl",
                                         "test", "train"]
  monkeypatch.undo()
  result = training.train_and_evaluate(TINY, config, workdir)
  assert result["step"] == 2 and not result["train"]  # resumed at the end: no training
  model, _, step = runs.restore_model(workdir)
  assert step == 2
  loaded = tf.saved_model.load(runs.export_dir(workdir))
  for got, want in zip(loaded.model_variables, model.variables):
    np.testing.assert_array_equal(got.numpy(), np.asarray(want))


# ----------------------------------------------------------------------------- distribution
@pytest.mark.slow
def test_mirrored_two_devices_matches_one_device_on_the_same_batch(tmp_path):
  """Two logical CPU devices: the distributed step's loss and update equal the one-device
  computation of the same global-batch mean (each half with that replica's seed)."""
  proc = _run_python("""
      import numpy as np, tensorflow as tf, keras
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      import kanerva_tf as kt
      from kanerva_tf import training
      cfg = kt.ModelConfig(image_shape=(8, 8, 1), code_size=6, memory_size=5, address_size=4,
                           num_filters=4, y_size=3, mlp_hidden_size=8, episode_length=4)
      x = tf.cast(tf.random.stateless_uniform((4, 4, 8, 8, 1), (1, 2)) < 0.3, tf.float32)
      keys = ["loss", "reconstruction", "kl_z", "kl_y", "kl_memory"]

      strategy = distribute.make_strategy("mirrored")
      assert strategy.num_replicas_in_sync == 2, strategy.extended.worker_devices
      with strategy.scope():
        keras.utils.set_random_seed(0)
        model = kt.KanervaMachine(cfg); model(x)
        opt = keras.optimizers.SGD(0.1); opt.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64)
      init = [v.numpy() for v in model.trainable_variables]
      train = training.make_train_function(strategy, model, opt, step, keys=keys,
                                           global_batch_size=4, seed=7)
      dist = iter(strategy.experimental_distribute_dataset(
          tf.data.Dataset.from_tensors(x).repeat()))
      got = {k: float(v) for k, v in train(dist, tf.constant(1)).items()}
      updated = [v.numpy() for v in model.trainable_variables]

      ref = kt.KanervaMachine(cfg); ref(x)
      for v, a in zip(ref.trainable_variables, init):
        v.assign(a)
      grads_sum, want = None, {k: 0. for k in keys}
      for r in range(2):
        half = x[2 * r: 2 * r + 2]
        with tf.GradientTape() as tape:
          out = ref(half, training=True, seed=training.replica_seed(7, 0, r, 2))
          loss = tf.reduce_sum(out["per_example_loss"]) / 4.
        g = tape.gradient(loss, ref.trainable_variables)
        grads_sum = g if grads_sum is None else [a + b for a, b in zip(grads_sum, g)]
        for k in keys:
          want[k] += float(out[k]) / 2
      for k in keys:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)
      for a, u, g in zip(init, updated, grads_sum):
        np.testing.assert_allclose(u, a - 0.1 * g.numpy(), rtol=1e-4, atol=1e-6)
      print("OK", got["loss"])
      """)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "OK" in proc.stdout


# ----------------------------------------------------------------------------- train.py
@pytest.mark.parametrize("flagfile, preset", [
    ("omniglot.flags", "omniglot"),
    pytest.param("cifar.flags", "cifar", marks=pytest.mark.slow),  # a TensorFlow import each
])
def test_flagfiles_parse_to_the_paper_presets(flagfile, preset):
  proc = _run_python(f"""
      import train, kanerva_tf as kt
      train.define_flags()
      train.FLAGS(["train.py", "--flagfile={flagfile}"])
      model_config, train_config = train.configs_from_flags()
      assert model_config == kt.ModelConfig.{preset}(), model_config
      assert (train_config.batch_size, train_config.learning_rate) == (16, 3e-4)
      # No machine-specific path: the data directory comes from --data_dir or TFDS_DATA_DIR.
      assert train_config.data_dir is None and train_config.download is True
      assert model_config.episode_length == 32
      print("OK")
      """)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_train_config_field_is_documented_with_its_default_and_choices():
  assert config_lib.check_field_docs(training.TrainConfig) == []
  for name in training.TrainConfig.CHOICES:  # the choices __post_init__ enforces
    with pytest.raises(ValueError, match=f"{name} must be one of"):
      training.TrainConfig(**{name: "bogus"})


# The flags whose default is None so that the dataset's preset decides (configs_from_flags).
PRESET_FLAGS = {"code_size", "memory_size", "address_size", "y_size", "num_filters",
                "y_noise_std", "noise_variance", "likelihood", "read_posterior", "y_scale",
                "write_address"}


def test_train_flags_take_default_choices_and_help_from_the_configs():
  """Each flag of a ModelConfig / TrainConfig field has the field's default (None for the
  preset's sizes), its choices and its documentation as help; no other flag shadows a field."""
  spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  fv = flags.FlagValues()
  script.define_flags(fv)
  fields = {cls: {f.name for f in dataclasses.fields(cls)}
            for cls in (kt.ModelConfig, training.TrainConfig)}
  mapped = set(script.CONFIG_FLAGS.values())
  for cls, names in fields.items():
    for name in names & set(fv):  # a flag named like a field sets that field
      assert (cls, name) in mapped, (cls, name)
  assert script.CONFIG_FLAGS["model"] == (training.TrainConfig, "model_type")
  # Every field has a flag but these (set by the data or the presets, or by library users).
  unflagged = {(cls, name) for cls, names in fields.items() for name in names} - mapped
  assert unflagged == {(kt.ModelConfig, "image_shape"), (kt.ModelConfig, "mlp_hidden_size"),
                       (training.TrainConfig, "max_checkpoints")}, unflagged
  for flag, (cls, field) in script.CONFIG_FLAGS.items():
    default = config_lib.field_default(cls, field)
    expected = None if flag in PRESET_FLAGS else default
    assert fv[flag].default == expected, (flag, fv[flag].default, expected)
    assert config_lib.field_docs(cls)[field] in fv[flag].help, flag  # after <a|b>: for enums
    choices = cls.CHOICES.get(field)
    assert getattr(fv[flag].parser, "enum_values", None) == (
        list(choices) if choices else None), flag
  for flag in PRESET_FLAGS:  # the help names the presets' values
    assert f"omniglot {getattr(kt.ModelConfig.omniglot(), flag)!r}" in fv[flag].help, flag


@pytest.mark.slow
def test_addressing_and_memory_noise_flags_reach_the_model_config():
  """--y_size, --y_noise_std, --noise_variance, --y_scale and --write_address override the
  preset; unset, they keep it."""
  proc = _run_python("""
      import train, kanerva_tf as kt
      train.define_flags()
      train.FLAGS(["train.py", "--flagfile=omniglot.flags", "--y_size=8", "--y_noise_std=0",
                   "--noise_variance=0.25", "--y_scale=0.5", "--write_address=mean"])
      model_config, _ = train.configs_from_flags()
      assert model_config == kt.ModelConfig.omniglot(
          y_size=8, y_noise_std=0., noise_variance=0.25, y_scale=0.5,
          write_address="mean"), model_config
      print("OK")
      """)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK" in proc.stdout


@pytest.mark.slow
def test_nodownload_flag_reaches_the_train_config():
  proc = _run_python("""
      import train
      train.define_flags()
      train.FLAGS(["train.py", "--flagfile=omniglot.flags", "--nodownload"])
      assert train.configs_from_flags()[1].download is False
      print("OK")
      """)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK" in proc.stdout


def _closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("download", [True, False])
def test_train_py_without_the_data_fails_fast_with_a_clear_error(download, tmp_path):
  """Empty data directory, no internet (every request goes to a closed local port): with
  --download the download fails in seconds, with --nodownload at once; the error names the
  dataset, the directory and how to prepare the data offline, and no run is started."""
  data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  data_dir.mkdir()
  proxy = f"http://127.0.0.1:{_closed_port()}"
  env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "tfds_data_dir")}
  env.update({k: proxy for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")},
             TF_CPP_MIN_LOG_LEVEL="2")
  start = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "train.py", "--flagfile=omniglot.flags", f"--data_dir={data_dir}",
       f"--workdir={workdir}", "--download" if download else "--nodownload"],
      cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
  assert time.monotonic() - start < 60  # TensorFlow's import included
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: error: dataset 'omniglot'"), last
  assert f"is not prepared in data_dir {data_dir}" in last
  # requests reports the dead proxy as ProxyError (a ConnectionError) or ConnectionError.
  assert (any(f"Downloading it failed: {e}" in last for e in ("ConnectionError", "ProxyError"))
          if download else "Downloading is off" in last), last
  assert "tfds build omniglot" in last and "TFDS_DATA_DIR" in last
  assert "Traceback" not in proc.stderr
  assert not workdir.exists() and not list(data_dir.iterdir())


@pytest.mark.slow
def test_train_py_rejects_bad_flags_before_any_work(tmp_path):
  proc = subprocess.run([sys.executable, "train.py", "--flagfile=omniglot.flags",
                         f"--workdir={tmp_path}", "--batch_size=0"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "--batch_size=0" in proc.stderr and "positive" in proc.stderr
  assert not os.listdir(tmp_path)


def _last_line(stderr):
  return stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_train_py_reports_a_bad_setting_in_one_line_or_a_traceback_on_request(tmp_path):
  """A ValueError of the library (here ModelConfig's) is one line on stderr and exit status 1;
  KANERVA_TRACEBACK=1 or --verbosity=1 adds the traceback."""
  args = [sys.executable, "train.py", "--flagfile=omniglot.flags", f"--workdir={tmp_path}",
          "--chunk_size=4"]
  message = ("train.py: error: ModelConfig.chunk_size is only used with write_method='online'; "
             "got chunk_size=4 with 'batch'.")
  env = {k: v for k, v in os.environ.items() if k != "KANERVA_TRACEBACK"}
  for extra_args, extra_env, traceback in [([], {}, False),
                                           ([], {"KANERVA_TRACEBACK": "1"}, True),
                                           (["--verbosity=1"], {}, True)]:
    proc = subprocess.run(args + extra_args, cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**env, **extra_env})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert _last_line(proc.stderr) == message, proc.stderr[-3000:]
    assert ("Traceback (most recent call last)" in proc.stderr) == traceback
    assert proc.stderr.count(message) == 1  # not also absl's usage text
  assert not os.listdir(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_TFDS / "cifar10").is_dir() or not (SHARED_TFDS / "omniglot").is_dir(),
                    reason=f"prepared TFDS omniglot and cifar10 not found in {SHARED_TFDS}")
def test_train_py_reports_library_errors_in_one_line(tmp_path):
  """Errors found once the data is known: a Bernoulli likelihood on colour images, a workdir
  holding another model's run, a workdir that cannot be written."""
  other = tmp_path / "other"
  runs.save_run_config(str(other), json.loads(json.dumps({
      "model_type": "kanerva", "model": TINY.to_dict(), "data": {"dataset": "omniglot"},
      "train": {}})))
  (tmp_path / "file").write_text("")
  cases = [
      (["--flagfile=cifar.flags", "--likelihood=bernoulli", f"--workdir={tmp_path / 'a'}"],
       "train.py: error: likelihood 'bernoulli' needs binarized images, but 'cifar10' is "
       "loaded with binarize=False"),
      (["--flagfile=omniglot.flags", f"--workdir={other}"],
       f"train.py: error: '{other}' holds a run with a different model ("),
      (["--flagfile=omniglot.flags", f"--workdir={tmp_path / 'file' / 'run'}"],
       f"train.py: error: Cannot write to the run directory {tmp_path / 'file' / 'run'} "
       "(FailedPreconditionError"),
  ]
  env = {k: v for k, v in os.environ.items() if k != "KANERVA_TRACEBACK"}
  for args, start in cases:
    proc = subprocess.run([sys.executable, "train.py", f"--data_dir={SHARED_TFDS}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert _last_line(proc.stderr).startswith(start), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
  assert not (tmp_path / "a").exists()
  assert sorted(os.listdir(other)) == ["config.json"]


@pytest.mark.slow
def test_train_py_ctrl_c_exits_130_with_a_resume_hint(tmp_path):
  proc = _run_python(f"""
      import train
      from kanerva_tf import training
      def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()
      training.train_and_evaluate = interrupted
      train.define_flags()
      train.FLAGS(["train.py", "--flagfile=omniglot.flags", "--workdir={tmp_path}"])
      try:
        train.main(["train.py"])
      except SystemExit as e:
        print("EXIT", e.code)
      """)
  assert "EXIT 130" in proc.stdout, proc.stderr[-3000:]
  assert (f"Interrupted by Ctrl-C; the checkpoints in {tmp_path} include the last step "
          "trained: re-run the same command to resume.") in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_TFDS / "omniglot").is_dir(),
                    reason=f"prepared TFDS omniglot not found in {SHARED_TFDS}")
def test_train_py_runs_on_real_omniglot(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "train.py", "--flagfile=omniglot.flags", f"--data_dir={SHARED_TFDS}",
       f"--workdir={workdir}", "--train_steps=2", "--steps_per_call=1", "--batch_size=2",
       "--episode_length=4", "--eval_batches=1", "--log_every=1", "--image_every=0",
       "--export=false"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 2/2" in proc.stderr
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-2")


def test_a_vae_run_is_identified_by_the_fields_the_vae_uses(tmp_path):
  """Resuming a VAE run ignores memory-only fields (their defaults may change); a change of a
  field the VAE uses is refused, and a Kanerva Machine run compares every field."""
  def run_config(model_type, **model):
    config = kt.ModelConfig(**{**TINY.to_dict(), **model})
    return json.loads(json.dumps({"model_type": model_type, "model": config.to_dict(),
                                  "data": {"dataset": "omniglot"}, "train": {}}))
  for model_type in ("vae", "kanerva"):
    workdir = str(tmp_path / model_type)
    os.makedirs(workdir)
    training._check_run_config(workdir, run_config(model_type, y_size=50))
    later = run_config(model_type, y_size=16)
    if model_type == "vae":
      training._check_run_config(workdir, later)
    else:
      with pytest.raises(ValueError, match=r"y_size: saved 50, now 16"):
        training._check_run_config(workdir, later)
    with pytest.raises(ValueError, match=r"code_size"):
      training._check_run_config(workdir, run_config(model_type, code_size=7))


@pytest.mark.slow
def test_resume_under_mirrored_strategy(mock_omniglot, tmp_path):
  """A run resumes under MirroredStrategy, where the optimizer's restored learning rate is a
  MirroredVariable (reading it with float() failed)."""
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(TINY, _train_config(train_steps=2, strategy="mirrored"), workdir)
  result = training.train_and_evaluate(TINY, _train_config(train_steps=4, strategy="mirrored"),
                                       workdir)
  assert result["step"] == 4
