"""Tests of kanerva_tf.cli: which errors become one line, its format, the traceback switches.
The scripts themselves are run in test_training.py (train.py) and test_evaluate_run.py (eval.py)."""

import errno

import pytest
import tensorflow as tf
from absl import app

from kanerva_tf import cli
from kanerva_tf import runs


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
