"""Tests of kanerva_tf.cli: which errors become one line, its format, the traceback switches;
and train.py's --dnc_* flags (the DNC baseline's sizes) and their errors. The scripts
themselves are run in test_training.py (train.py) and test_evaluate_run.py (eval.py)."""

import dataclasses
import errno
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import app
from absl import flags

from kanerva_tf import cli
from kanerva_tf import config as config_lib
from kanerva_tf import runs
from kanerva_tf.dnc_model import DNCConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def _raise_and_report(error, prog="train.py"):
  try:
    raise error
  except Exception as e:  # pylint: disable=broad-except
    cli.exit_with_error(prog, e)


@pytest.fixture(autouse=True)
def _no_traceback_switch(monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  monkeypatch.setattr(cli.logging, "get_verbosity", lambda: 0)


@pytest.mark.parametrize("error, line", [
    (ValueError("batch_size=3 must be divisible by the 2 replicas of the strategy."),
     "batch_size=3 must be divisible by the 2 replicas of the strategy."),
    (TypeError("a\n  b\n\nc"), "a b c"),
    (app.UsageError("--workdir is required."), "--workdir is required."),
    (OSError(errno.ENOSPC, "No space left on device"), "[Errno 28] No space left on device"),
    (FileNotFoundError("No checkpoint in /w/checkpoints: train first."),
     "No checkpoint in /w/checkpoints: train first."),
    (FloatingPointError("Non-finite training loss at step 7"),
     "Non-finite training loss at step 7"),
    (runs.CheckpointError("No checkpoint in /w restores"), "No checkpoint in /w restores"),
    (tf.errors.PermissionDeniedError(None, None, "/w/ckpt; Permission denied"),
     "/w/ckpt; Permission denied"),
    (ValueError(), "ValueError"),
])
def test_user_errors_are_one_line_and_exit_1(error, line, capsys):
  with pytest.raises(SystemExit) as info:
    _raise_and_report(error)
  assert info.value.code == 1
  captured = capsys.readouterr()
  assert captured.err == f"train.py: error: {line}\n" and not captured.out


@pytest.mark.parametrize("error", [KeyError("k"), AssertionError("bug"), RuntimeError("bug"),
                                   tf.errors.InvalidArgumentError(None, None, "bad shape")])
def test_other_errors_keep_their_traceback(error, capsys):
  with pytest.raises(type(error)) as info:
    _raise_and_report(error)
  assert info.value is error and info.value.__traceback__ is not None
  assert not capsys.readouterr().err


@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False),
                                          ("", False), ("false", False)])
def test_the_environment_variable_shows_the_traceback(value, shown, monkeypatch, capsys):
  monkeypatch.setenv(cli.TRACEBACK_ENV, value)
  with pytest.raises(SystemExit):
    _raise_and_report(ValueError("bad setting"))
  err = capsys.readouterr().err
  assert err.endswith("train.py: error: bad setting\n")
  assert ("Traceback (most recent call last)" in err) == shown
  assert ("ValueError: bad setting" in err) == shown


def test_absl_verbosity_shows_the_traceback(monkeypatch, capsys):
  monkeypatch.setattr(cli.logging, "get_verbosity", lambda: 1)
  with pytest.raises(SystemExit):
    _raise_and_report(app.UsageError("bad flag"), prog="eval.py")
  err = capsys.readouterr().err
  assert "Traceback (most recent call last)" in err and "UsageError: bad flag" in err
  assert err.endswith("eval.py: error: bad flag\n")


# ----------------------------------------------------------------------------- train.py --dnc_*
def _train_script():
  spec = importlib.util.spec_from_file_location("train_script_dnc_flags", REPO / "train.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  fv = flags.FlagValues()
  script.define_flags(fv)
  return script, fv


def test_dnc_flags_are_the_dnc_config_fields():
  """--dnc_<field> for every DNCConfig field, with its default, documentation and type."""
  assert config_lib.check_field_docs(DNCConfig) == []
  script, fv = _train_script()
  dnc_flags = {name: field for name, (cls, field) in script.CONFIG_FLAGS.items()
               if cls is DNCConfig}
  assert dnc_flags == {f"dnc_{f.name}": f.name for f in dataclasses.fields(DNCConfig)}
  assert set(dnc_flags) == {"dnc_num_reads", "dnc_word_size", "dnc_memory_slots",
                            "dnc_controller_hidden_size"}
  for name, field in dnc_flags.items():
    assert fv[name].default == config_lib.field_default(DNCConfig, field), name
    assert config_lib.field_docs(DNCConfig)[field] in fv[name].help, name
    assert "--model=dnc only" in fv[name].help, name


def test_dnc_flags_make_the_dnc_config():
  script, fv = _train_script()
  fv(["train.py", "--workdir=/tmp/unused", "--model=dnc", "--dnc_num_reads=2",
      "--dnc_word_size=8", "--dnc_controller_hidden_size=16"])
  assert script.dnc_config_from_flags(fv) == DNCConfig(num_reads=2, word_size=8,
                                                       controller_hidden_size=16)
  model_config, train_config = script.configs_from_flags(fv)  # unchanged by the DNC's flags
  assert train_config.model_type == "dnc" and model_config.memory_size == 64
  script, fv = _train_script()
  fv(["train.py", "--workdir=/tmp/unused", "--model=dnc"])
  assert script.dnc_config_from_flags(fv) == DNCConfig()
  script, fv = _train_script()
  fv(["train.py", "--workdir=/tmp/unused"])                     # --model=kanerva
  assert script.dnc_config_from_flags(fv) is None


@pytest.mark.parametrize("model", [None, "kanerva", "vae"])
def test_dnc_flags_with_another_model_are_an_error(model):
  script, fv = _train_script()
  fv(["train.py", "--workdir=/tmp/unused", "--dnc_memory_slots=32", "--dnc_num_reads=4"]
     + ([f"--model={model}"] if model else []))
  with pytest.raises(ValueError, match=r"--dnc_num_reads, --dnc_memory_slots set the sizes of "
                     rf"the DNC baseline and need --model=dnc; got --model={model or 'kanerva'}"):
    script.dnc_config_from_flags(fv)
  script, fv = _train_script()
  with pytest.raises(flags.IllegalFlagValueError, match="dnc_num_reads=0"):
    fv(["train.py", "--workdir=/tmp/unused", "--model=dnc", "--dnc_num_reads=0"])


def test_train_py_reports_dnc_flags_with_another_model_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "train.py", f"--workdir={tmp_path / 'run'}", "--model=vae",
       "--dnc_word_size=8"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", cli.TRACEBACK_ENV: "0"}, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.splitlines()[-1] == (
      "train.py: error: --dnc_word_size sets the sizes of the DNC baseline and needs "
      "--model=dnc; got --model=vae.")
  assert not (tmp_path / "run").exists()
