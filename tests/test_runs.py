"""Tests of kanerva_tf.runs: checkpoint discovery and restore (damaged checkpoints), writable
workdirs, restore_model, the DNC's sizes in config.json (restored, and checked on resume by
kanerva_tf.training). Training-level resume tests are in test_training.py."""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

import kanerva_tf as kt
from kanerva_tf import runs
from kanerva_tf import training
from kanerva_tf.dnc_model import DNCConfig
from kanerva_tf.dnc_model import DNCMachine

TINY = kt.ModelConfig.omniglot(code_size=6, memory_size=5, address_size=4, num_filters=4,
                               y_size=3, mlp_hidden_size=8, episode_length=4)


def _truncate(path, keep=0.5):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(int(size * keep))


def _data_file(prefix):
  return prefix + ".data-00000-of-00001"


def _variables(seed):
  return [tf.Variable(tf.random.stateless_normal([20, 10], (seed, 0))),
          tf.Variable(tf.random.stateless_normal([3], (seed, 1)))]


def _checkpoints(directory, steps):
  """A CheckpointManager directory with one checkpoint per step; returns {step: values}."""
  variables = _variables(0)
  step = tf.Variable(0, dtype=tf.int64)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(variables=variables, step=step), directory, max_to_keep=5)
  saved = {}
  for s in steps:
    for i, v in enumerate(variables):
      v.assign(tf.random.stateless_normal(v.shape, (s, i)))
    step.assign(s)
    manager.save(checkpoint_number=s)
    saved[s] = [v.numpy() for v in variables]
  return saved


def _fresh():
  variables, step = _variables(99), tf.Variable(-1, dtype=tf.int64)
  return tf.train.Checkpoint(variables=variables, step=step), variables, step


# ----------------------------------------------------------------------------- restore
def test_restore_checkpoint_takes_the_newest(tmp_path):
  directory = str(tmp_path / "checkpoints")
  saved = _checkpoints(directory, [2, 4, 6])
  assert [os.path.basename(p) for p in runs.checkpoint_paths(directory)] == [
      "ckpt-6", "ckpt-4", "ckpt-2"]
  checkpoint, variables, step = _fresh()
  assert runs.restore_checkpoint(checkpoint, directory).endswith("ckpt-6")
  assert int(step.numpy()) == 6
  for v, want in zip(variables, saved[6]):
    np.testing.assert_array_equal(v.numpy(), want)
  assert runs.restore_checkpoint(_fresh()[0], str(tmp_path / "empty")) is None


@pytest.mark.parametrize("damage", ["truncated data", "corrupted data", "missing data",
                                    "truncated index"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage):
  directory = str(tmp_path / "checkpoints")
  saved = _checkpoints(directory, [2, 4])
  newest = os.path.join(directory, "ckpt-4")
  if damage == "truncated data":
    _truncate(_data_file(newest))
  elif damage == "corrupted data":
    raw = bytearray(open(_data_file(newest), "rb").read())
    raw[len(raw) // 2:] = bytes(len(raw) - len(raw) // 2)
    open(_data_file(newest), "wb").write(bytes(raw))
  elif damage == "missing data":
    os.remove(_data_file(newest))
  else:
    _truncate(newest + ".index")
  checkpoint, variables, step = _fresh()
  with caplog.at_level(logging.WARNING, logger="absl"):
    restored = runs.restore_checkpoint(checkpoint, directory)
  assert restored.endswith("ckpt-2")
  assert int(step.numpy()) == 2
  for v, want in zip(variables, saved[2]):  # every value from ckpt-2, none left from ckpt-4
    np.testing.assert_array_equal(v.numpy(), want)
  warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert f"Checkpoint {newest} does not restore" in warnings, warnings
  assert "skipped the damaged" in warnings and "ckpt-4.index" in warnings
  assert os.path.exists(newest + ".index")  # damaged files are left in place


def test_no_checkpoint_restores_is_one_error_naming_the_files(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _checkpoints(directory, [2, 4])
  for s in (2, 4):
    _truncate(_data_file(os.path.join(directory, f"ckpt-{s}")))
  before = sorted(os.listdir(directory))
  with pytest.raises(runs.CheckpointError) as info:
    runs.restore_checkpoint(_fresh()[0], directory)
  message = str(info.value)
  assert "\n" not in message and f"No checkpoint in {directory} restores" in message
  for s in (2, 4):
    assert f"ckpt-{s}.data-00000-of-00001, ckpt-{s}.index" in message
  assert "Read less bytes than requested" in message
  assert sorted(os.listdir(directory)) == before  # nothing deleted


def test_an_explicit_checkpoint_is_the_only_one_tried(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _checkpoints(directory, [2, 4])
  path = os.path.join(directory, "ckpt-4")
  _truncate(_data_file(path))
  with pytest.raises(runs.CheckpointError, match=f"Checkpoint {path} does not restore"):
    runs.restore_checkpoint(_fresh()[0], directory, path)
  with pytest.raises(FileNotFoundError, match="ckpt-9 not found: there is no .*ckpt-9.index"):
    runs.restore_checkpoint(_fresh()[0], directory, os.path.join(directory, "ckpt-9"))


def test_a_different_model_is_an_error_not_damage(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _checkpoints(directory, [2])
  other = tf.train.Checkpoint(variables=[tf.Variable(tf.zeros([20, 11])),
                                         tf.Variable(tf.zeros([3]))])
  with pytest.raises(ValueError, match="incompatible tensor with shape"):
    runs.restore_checkpoint(other, directory, partial=True)


def test_unrecorded_or_unlisted_checkpoints_are_found(tmp_path):
  """A save that wrote its files but not the state file, or a lost state file: the
  checkpoints on disk are still candidates, newest first."""
  directory = str(tmp_path / "checkpoints")
  _checkpoints(directory, [2, 4])
  os.remove(os.path.join(directory, "checkpoint"))
  checkpoint, _, step = _fresh()
  assert runs.restore_checkpoint(checkpoint, directory).endswith("ckpt-4")
  assert int(step.numpy()) == 4


def test_restore_model_skips_a_damaged_newest_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  runs.save_run_config(workdir, {"model_type": "vae", "model": TINY.to_dict(),
                                 "data": {"dataset": "omniglot"}})
  model = runs.build_model("vae", TINY)
  model(tf.zeros((1, 2) + TINY.image_shape))
  step = tf.Variable(0, dtype=tf.int64)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model_variables=runs.checkpointed_variables(model), step=step),
      runs.checkpoint_dir(workdir), max_to_keep=3)
  weights = {}
  for s in (3, 5):
    model.variables[0].assign(tf.fill(model.variables[0].shape, float(s)))
    step.assign(s)
    manager.save(checkpoint_number=s)
    weights[s] = model.variables[0].numpy()
  _truncate(_data_file(manager.latest_checkpoint))
  restored, _, got_step = runs.restore_model(workdir)
  assert got_step == 3
  np.testing.assert_array_equal(restored.variables[0].numpy(), weights[3])
  with pytest.raises(runs.CheckpointError, match="ckpt-5 does not restore"):
    runs.restore_model(workdir, checkpoint=manager.latest_checkpoint)


# ----------------------------------------------------------------------------- the DNC's sizes
TINY_DNC = DNCConfig(num_reads=2, word_size=4, memory_slots=7, controller_hidden_size=8)


def _dnc_run(workdir, dnc_config, recorded=True):
  """A DNC run directory with one checkpoint (step 2); config.json records `dnc_config`
  under "dnc" (recorded=False: no "dnc" entry, as runs before it existed)."""
  run_config = {"model_type": "dnc", "model": TINY.to_dict(), "data": {"dataset": "omniglot"}}
  if recorded:
    run_config["dnc"] = dnc_config.to_dict()
  runs.save_run_config(workdir, run_config)
  model = runs.build_model("dnc", TINY, dnc_config)
  model(tf.zeros((1, 2) + TINY.image_shape))
  for i, v in enumerate(model.variables):
    v.assign(tf.random.stateless_normal(v.shape, (i, 3)))
  tf.train.Checkpoint(model_variables=runs.checkpointed_variables(model),
                      step=tf.Variable(2, dtype=tf.int64)).save(
                          os.path.join(runs.checkpoint_dir(workdir), "ckpt"))
  return model


def test_build_model_takes_a_dnc_config_for_the_dnc_only():
  model = runs.build_model("dnc", TINY, TINY_DNC)
  assert isinstance(model, DNCMachine) and model.dnc_config == TINY_DNC
  assert (model.memory_slots, model.word_size, model.num_reads) == (7, 4, 2)
  assert runs.build_model("dnc", TINY).dnc_config == DNCConfig()
  with pytest.raises(ValueError, match="DNCConfig sets the sizes of the DNC baseline"):
    runs.build_model("kanerva", TINY, TINY_DNC)


def test_dnc_config_of_a_run_and_its_defaults_for_old_runs():
  assert runs.dnc_config_of({"model_type": "dnc", "dnc": TINY_DNC.to_dict()}) == TINY_DNC
  assert runs.dnc_config_of({"model_type": "dnc"}) == DNCConfig()   # before "dnc" existed
  assert runs.dnc_config_of({"model_type": "kanerva"}) is None
  with pytest.raises(ValueError, match="DNCConfig: unknown fields"):
    runs.dnc_config_of({"model_type": "dnc", "dnc": {"num_heads": 2}})


@pytest.mark.parametrize("recorded", [True, False])
def test_restore_model_rebuilds_the_dnc_with_its_recorded_sizes(tmp_path, recorded):
  """With "dnc" in config.json, its sizes; without (an old run), the default DNCConfig."""
  dnc_config = TINY_DNC if recorded else DNCConfig(controller_hidden_size=200)
  workdir = str(tmp_path / "run")
  model = _dnc_run(workdir, dnc_config, recorded)
  restored, run_config, step = runs.restore_model(workdir)
  assert step == 2 and isinstance(restored, DNCMachine)
  assert restored.dnc_config == dnc_config and ("dnc" in run_config) == recorded
  for a, b in zip(restored.variables, model.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_dnc_run_resumes_only_with_the_same_sizes(tmp_path):
  """training._check_run_config (train_and_evaluate's check before anything is trained)."""
  workdir = str(tmp_path / "run")

  def run_config(dnc_config):  # in the form it takes in config.json, as train_and_evaluate's
    return json.loads(json.dumps(
        {"model_type": "dnc", "model": TINY.to_dict(), "data": {"dataset": "omniglot"},
         "train": {}, **({"dnc": dnc_config.to_dict()} if dnc_config else {})}))

  training._check_run_config(workdir, run_config(TINY_DNC))  # pylint: disable=protected-access
  assert runs.load_run_config(workdir)["dnc"] == TINY_DNC.to_dict()
  training._check_run_config(workdir, run_config(TINY_DNC))  # pylint: disable=protected-access
  other = DNCConfig(num_reads=3, word_size=4, memory_slots=7, controller_hidden_size=8)
  with pytest.raises(ValueError, match=r"different DNC config \(--dnc_\* flags\) \(num_reads: "
                     r"saved 2, now 3\)\. Resume it with the same settings"):
    training._check_run_config(workdir, run_config(other))  # pylint: disable=protected-access
  # None stands for the Kanerva memory's size: word_size=None is C = 6, not 4.
  with pytest.raises(ValueError, match="word_size: saved 4, now 6"):
    training._check_run_config(  # pylint: disable=protected-access
        workdir, run_config(DNCConfig(num_reads=2, memory_slots=7, controller_hidden_size=8)))
  # ... and equal to it, the same model: resumes.
  training._check_run_config(  # pylint: disable=protected-access
      workdir, run_config(DNCConfig(num_reads=2, word_size=4, memory_slots=7,
                                    controller_hidden_size=8)))
  # An old run without "dnc" was trained with the default sizes.
  old = str(tmp_path / "old")
  runs.save_run_config(old, run_config(None))
  training._check_run_config(old, run_config(DNCConfig()))  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="controller_hidden_size: saved 200, now 8"):
    training._check_run_config(old, run_config(TINY_DNC))  # pylint: disable=protected-access


def test_a_run_resumes_only_with_the_precision_it_was_trained_with(tmp_path):
  """A resumed run keeps its encoder/decoder precision; one recorded before config.json had
  "precision" was float32."""
  def run_config(train):  # in the form it takes in config.json
    return json.loads(json.dumps({"model_type": "vae", "model": TINY.to_dict(),
                                  "data": {"dataset": "omniglot"}, "train": train}))
  workdir = str(tmp_path / "run")
  training._check_run_config(workdir, run_config({"precision": "bfloat16"}))  # pylint: disable=protected-access
  training._check_run_config(  # pylint: disable=protected-access
      workdir, run_config({"precision": "bfloat16", "train_steps": 9}))  # other settings may change
  with pytest.raises(ValueError, match=r"trained with --precision=bfloat16; now "
                     r"--precision=float32\. Resume it with --precision=bfloat16"):
    training._check_run_config(workdir, run_config({"precision": "float32"}))  # pylint: disable=protected-access
  old = str(tmp_path / "old")
  runs.save_run_config(old, run_config({}))
  training._check_run_config(old, run_config({"precision": "float32"}))  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="trained with --precision=float32; now --precision=bfloat16"):
    training._check_run_config(old, run_config({"precision": "bfloat16"}))  # pylint: disable=protected-access


def test_train_and_evaluate_refuses_a_dnc_config_for_another_model(tmp_path):
  with pytest.raises(ValueError, match="needs model_type 'dnc'; got model_type 'vae'"):
    training.train_and_evaluate(TINY, training.TrainConfig(model_type="vae"),
                                str(tmp_path / "run"), dnc_config=TINY_DNC)
  assert not os.path.exists(tmp_path / "run")


# ----------------------------------------------------------------------------- workdir
def test_check_writable_creates_the_workdir(tmp_path):
  workdir = tmp_path / "a" / "b" / "run"
  runs.check_writable(str(workdir))
  assert workdir.is_dir() and not os.listdir(workdir)  # the probe file is removed


def test_check_writable_refuses_a_parent_that_is_a_file(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(OSError, match=r"Cannot write to the run directory .*file/run .*"
                     r"not a directory"):
    runs.check_writable(str(tmp_path / "file" / "run"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_check_writable_refuses_a_read_only_directory(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    with pytest.raises(OSError, match=f"Cannot write to the run directory {workdir}"):
      runs.check_writable(str(workdir))
  finally:
    workdir.chmod(0o755)
