"""How `train.py` and `eval.py` report errors: one clear line, or the full traceback on request.

An error that a setting or the environment causes -- a bad flag value, a workdir of another
run or one that cannot be written, a missing dataset or checkpoint, a damaged checkpoint, a
full disk, a NaN loss, a lost worker of multi-worker training -- reaches the user as

  train.py: error: <message>

on stderr, with exit status 1, instead of a Python traceback: the library builds these
messages to say what is wrong and what to do. Any other exception (a bug) keeps its traceback.
`KANERVA_TRACEBACK=1` in the environment, or absl's `--verbosity=1` (`-v 1`) or more, shows
the full traceback of every error.
"""

import os
import sys
import traceback

import tensorflow as tf
from absl import app
from absl import logging

from kanerva_tf import distribute
from kanerva_tf import runs

__all__ = ["TRACEBACK_ENV", "USER_ERRORS", "wants_traceback", "one_line", "exit_with_error"]

TRACEBACK_ENV = "KANERVA_TRACEBACK"

# Errors whose message is meant for the user (see the module docstring). ValueError and
# TypeError are what the library raises for bad settings; OSError covers FileNotFoundError
# (e.g. data.DatasetNotFoundError), PermissionError and a full disk; the TensorFlow errors
# are those of its file system operations; WorkerLostError says which worker to restart.
USER_ERRORS = (app.UsageError, ValueError, TypeError, OSError, FloatingPointError,
               runs.CheckpointError, distribute.WorkerLostError, tf.errors.NotFoundError,
               tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError,
               tf.errors.DataLossError, tf.errors.FailedPreconditionError)


def wants_traceback():
  """True when $KANERVA_TRACEBACK is set to anything but "", "0", "false" or "no", or absl's
  --verbosity is 1 (debug) or more."""
  if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no"):
    return True
  try:
    return logging.get_verbosity() >= 1
  except Exception:  # pylint: disable=broad-except  (flags not parsed: no absl app)
    return False


def one_line(error):
  """The error's message on one line (its lines joined); its type name if it has none."""
  message = getattr(error, "message", None) if isinstance(error, tf.errors.OpError) else None
  text = " ".join(line.strip() for line in str(message or error).splitlines() if line.strip())
  return text or type(error).__name__


def exit_with_error(prog, error):
  """Reports `error`, raised by the command `prog`: one line on stderr and SystemExit.

  Re-raises `error` (with its traceback) when it is not one of `USER_ERRORS`; prints its
  traceback before the line when `wants_traceback()`. Call it from an `except` clause.

  Raises:
    SystemExit: with the error's `exitcode` (absl's UsageError) or 1.
  """
  if not isinstance(error, USER_ERRORS):
    raise error
  if wants_traceback():  # printed here: absl would print a UsageError as the usage text
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
  print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
  raise SystemExit(getattr(error, "exitcode", None) or 1) from None
