r"""`train.py` on mock Omniglot, in its own process: a worker of tests/test_distribute.py.

  python tests/multi_worker_helper.py [--logical_cpus=N] [--mlp_hidden_size=H] \
      [--stall_at_step=S --stall_seconds=X] TRAIN_PY_FLAGS...

The helper's own flags (the others are train.py's):
  --logical_cpus=N     split the CPU into N logical devices (one process with N replicas).
  --mlp_hidden_size=H  the model's MLP width (train.py has no flag for it; tiny models).
  --stall_at_step=S, --stall_seconds=X  after writing the metrics of step S, sleep X seconds
                       in Python (the process stays alive and keeps up its heartbeats): a
                       worker that is stuck, for the collective timeout.
  --skip_eval_and_images=1  replace the evaluations and image summaries (made at least at
                       the end of every run) by no-ops: a faster test of what is distributed.

TFDS omniglot is mocked with 40 generated examples per split (`tfds.testing.mock_data`, as
the `mock_omniglot` fixture), so no data is needed. With --strategy=multi_worker, TF_CONFIG
comes from the environment. Errors end as train.py's do (`kanerva_tf.cli`).
"""

import dataclasses
import os
import pathlib
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OWN_FLAGS = ("--logical_cpus=", "--mlp_hidden_size=", "--stall_at_step=", "--stall_seconds=",
             "--skip_eval_and_images=")


def _own_flags(argv):
  own = {f[2:-1]: None for f in OWN_FLAGS}
  rest = []
  for arg in argv:
    prefix = next((f for f in OWN_FLAGS if arg.startswith(f)), None)
    if prefix:
      own[prefix[2:-1]] = float(arg[len(prefix):])
    else:
      rest.append(arg)
  return own, rest


def run():
  own, argv = _own_flags(sys.argv)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if own["logical_cpus"]:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * int(own["logical_cpus"]))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  from kanerva_tf import cli  # pylint: disable=g-import-not-at-top
  from kanerva_tf import training  # pylint: disable=g-import-not-at-top

  if own["mlp_hidden_size"]:
    configs_from_flags = train.configs_from_flags

    def tiny_configs():
      model_config, train_config = configs_from_flags()
      return (dataclasses.replace(model_config, mlp_hidden_size=int(own["mlp_hidden_size"])),
              train_config)

    train.configs_from_flags = tiny_configs
  if own["skip_eval_and_images"]:
    training._log_images = lambda *args, **kwargs: None  # pylint: disable=protected-access
    training.evaluation.evaluate_bound = lambda *args, **kwargs: {"loss": 0., "num_episodes": 0}
  if own["stall_at_step"] is not None:
    append_metrics = training._append_metrics  # pylint: disable=protected-access

    def stalling_append(workdir, record):
      append_metrics(workdir, record)
      if record["step"] == int(own["stall_at_step"]) and record["split"] == "train":
        print(f"STALL {time.time()}", flush=True)
        time.sleep(own["stall_seconds"] or 3600)

    training._append_metrics = stalling_append  # pylint: disable=protected-access

  def main(args):
    try:
      train.main(args)
    except Exception as e:  # pylint: disable=broad-except
      cli.exit_with_error("train.py", e)

  train.define_flags()
  sys.argv = argv
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    app.run(main)


if __name__ == "__main__":
  run()
