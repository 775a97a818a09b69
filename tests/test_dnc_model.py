"""Tests of kanerva_tf.dnc_model: DNCMachine, the DNC baseline of Appendix D, and DNCConfig
(the loss and its terms, gradients reaching every variable, the decoder seeing only the
read-out, the write / read / generate API, config and serialization, training and evaluation
with --model=dnc via train.py / eval.py, restoring and exporting runs).

The DNC's addressing and layers, kanerva_tf.dnc, are tested in tests/test_dnc.py."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import kanerva_tf as kt
from kanerva_tf import dnc
from kanerva_tf import dnc_model
from kanerva_tf import evaluation
from kanerva_tf import export as export_lib
from kanerva_tf import runs
from kanerva_tf import training


# ----------------------------------------------------------------------------- DNCMachine
TINY = kt.ModelConfig.omniglot(code_size=6, memory_size=5, address_size=4, num_filters=4,
                               y_size=3, mlp_hidden_size=8, episode_length=4)
TINY_DNC = dnc_model.DNCConfig(num_reads=2, word_size=4, controller_hidden_size=8)


def _episode(seed=0, batch=2, length=3):
  x = tf.random.stateless_uniform((batch, length, 28, 28, 1), (seed, 7))
  return tf.cast(x < 0.3, tf.float32)


def _machine(config=TINY, dnc_config=TINY_DNC):
  model = dnc_model.DNCMachine(config, dnc_config, name="dnc")
  model(_episode())
  return model


def test_loss_keys_and_terms():
  model = _machine()
  out = model(_episode(), training=True, seed=3)
  assert set(out) == {"loss", "per_example_loss", "reconstruction", "kl_y", "kl_z"}
  assert out["per_example_loss"].shape == (2,)
  assert float(out["kl_z"]) == 0.
  assert float(out["kl_y"]) > 0.
  np.testing.assert_allclose(float(out["loss"]), float(out["reconstruction"] + out["kl_y"]),
                             rtol=1e-5)
  again = model(_episode(), training=True, seed=3)
  np.testing.assert_allclose(again["loss"].numpy(), out["loss"].numpy())  # stateless seeds
  half = model(_episode(), training=True, seed=3, kl_y_weight=0.5)
  np.testing.assert_allclose(float(half["loss"]),
                             float(out["reconstruction"] + 0.5 * out["kl_y"]), rtol=1e-5)
  assert float(half["kl_y"]) == float(out["kl_y"])


def test_gradients_reach_every_trainable_variable():
  model = _machine(kt.ModelConfig(**{**TINY.to_dict(), "y_scale": 0.5}))
  with tf.GradientTape() as tape:
    loss = model(_episode(), training=True, seed=1)["loss"]
  names = [v.path for v in model.trainable_variables]
  grads = tape.gradient(loss, model.trainable_variables)
  missing = [n for n, g in zip(names, grads) if g is None or not np.any(g.numpy())]
  assert not missing, missing
  assert any("q_y_scale_raw" in n for n in names)
  assert any("controller" in n for n in names) and any("read_out" in n for n in names)


def test_the_decoder_sees_only_the_read_out(monkeypatch):
  """z = mu(read vectors) + sigma eps: with the read vectors fixed, two different episodes
  give the decoder the same input (no path from x to z around the memory's read-out)."""
  model = _machine()
  seen = []
  decode = model.decode
  monkeypatch.setattr(model, "decode", lambda z: (seen.append(z.numpy()), decode(z))[1])
  a, b = _episode(1), _episode(2)
  model(a, seed=5), model(b, seed=5)
  assert not np.allclose(seen[0], seen[1])                         # through the memory
  fixed = tf.random.stateless_normal([2, 3, TINY_DNC.num_reads, TINY_DNC.word_size], (0, 0))
  monkeypatch.setattr(model.dnc, "read", lambda inputs, state: fixed)
  model(a, seed=5), model(b, seed=5)
  np.testing.assert_array_equal(seen[2], seen[3])
  mu = model.read_out(tf.reshape(fixed, [2, 3, -1])).numpy()
  eps = seen[2] - mu                                                 # the prior's unit noise
  assert 0.3 < eps.std() < 3. and abs(eps.mean()) < 1.


def test_reading_stores_nothing_and_each_query_is_read_alone():
  model = _machine()
  state = model.write(_episode(), seed=1)
  before = [v.numpy() for v in state]
  y = tf.random.stateless_normal([2, 3, TINY.y_size], (4, 4))
  mu = model.prior_mean(y, state).numpy()                            # [B, 3, C]
  for t in range(3):
    np.testing.assert_allclose(model.prior_mean(y[:, t:t + 1], state).numpy()[:, 0], mu[:, t],
                               atol=1e-5)
  model.read(_episode(3), state, iterations=2, seed=2)
  model.generate(state, 4, iterations=1, seed=3)
  for a, b in zip(before, state):
    np.testing.assert_array_equal(a, b.numpy())
  # Writing is sequential: the order of the episode matters to the state.
  reversed_state = model.write(_episode()[:, ::-1], seed=1)
  assert not np.allclose(reversed_state.link.numpy(), state.link.numpy())


def test_user_api_shapes_and_tensor_iterations():
  model = _machine()
  x = _episode()
  state = model.write(x, seed=1)
  assert tuple(state.memory.shape) == (2, 5, 4) and tuple(state.read_weights.shape) == (2, 2, 5)
  assert model.read(x, state, 2, seed=1).shape == (2, 2, 3, 28, 28, 1)
  np.testing.assert_allclose(model.read(x, state, tf.constant(2), seed=1).numpy(),
                             model.read(x, state, 2, seed=1).numpy(), atol=1e-5)
  assert model.generate(state, 4, 2, seed=1).shape == (3, 2, 4, 28, 28, 1)
  for iterations in (0, 2):  # a tensor: the reads in a tf.cond, same samples
    np.testing.assert_allclose(
        model.generate(state, 4, tf.constant(iterations), seed=1).numpy(),
        model.generate(state, 4, iterations, seed=1).numpy(), atol=1e-5)
  with pytest.raises(ValueError, match="iterations must be an int >= 0"):
    model.generate(state, 4, -1)
  assert model.reconstruct(x, seed=1).shape == x.shape
  with pytest.raises(ValueError, match="iterations must be >= 1"):
    model.read(x, state, 0)


def test_sizes_default_to_the_kanerva_memory_and_the_controller_to_appendix_d():
  model = dnc_model.DNCMachine(TINY)
  assert (model.memory_slots, model.word_size, model.num_reads) == (5, 6, 4)
  assert model.dnc.controller.hidden_size == 200
  assert model.dnc.controller.output_size == dnc.interface_size(6, 4)


def test_serialization_round_trip():
  model = _machine(dnc_config=dnc_model.DNCConfig(num_reads=3, controller_hidden_size=8))
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
  assert isinstance(restored, dnc_model.DNCMachine)
  assert restored.config == model.config and restored.dnc_config == model.dnc_config
  restored(_episode())
  assert [v.shape for v in restored.variables] == [v.shape for v in model.variables]
  for layer in (model.dnc, model.dnc.memory):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_kanerva_memory_options_are_refused():
  with pytest.raises(ValueError, match="distribution_memory"):
    dnc_model.DNCMachine(kt.ModelConfig(**{**TINY.to_dict(), "distribution_memory": True}))
  with pytest.raises(ValueError, match="num_reads"):
    dnc_model.DNCConfig(num_reads=0)
  with pytest.raises(TypeError, match="DNCConfig"):
    dnc_model.DNCMachine(TINY, {"num_reads": 2})


def test_write_address_mean():
  mean = _machine(kt.ModelConfig(**{**TINY.to_dict(), "write_address": "mean"}))
  x = _episode()
  s1, s2 = mean.write(x, seed=1), mean.write(x, seed=2)   # y at its mean; z still sampled
  assert not np.allclose(s1.memory.numpy(), s2.memory.numpy())


# ----------------------------------------------------------------------------- train / eval
REPO = pathlib.Path(__file__).resolve().parents[1]


def test_registered_model_type_and_scalar_keys():
  assert runs.MODEL_TYPES["dnc"] is dnc_model.DNCMachine
  assert isinstance(runs.build_model("dnc", TINY), dnc_model.DNCMachine)
  keys = training._scalar_keys("dnc")  # pylint: disable=protected-access
  out = _machine()(_episode())
  assert set(keys) <= set(out) and "kl_y" in keys and "kl_memory" not in keys


def test_importance_weighted_estimate_of_the_dnc():
  model = _machine()
  x = _episode()
  log_p = evaluation.importance_log_likelihood(model, x, 3, seed=1).numpy()
  assert log_p.shape == (2, 3) and np.all(np.isfinite(log_p)) and np.all(log_p < 0.)
  # k = 1: minus its mean is a Monte Carlo estimate of the loss (same terms, KL(y) sampled).
  one = [-evaluation.importance_log_likelihood(model, x, 1, seed=s).numpy().mean()
         for s in range(4)]
  loss = np.mean([float(model(x, seed=s)["loss"]) for s in range(4)])
  np.testing.assert_allclose(np.mean(one), loss, rtol=0.05)


@pytest.mark.slow
def test_train_export_restore_and_eval_py_end_to_end(mock_omniglot, tmp_path):
  workdir = str(tmp_path / "dnc")
  config = training.TrainConfig(
      model_type="dnc", dataset="omniglot", train_steps=2, batch_size=2, steps_per_call=1,
      log_every=1, checkpoint_every=2, eval_every=2, eval_batches=1, image_every=2,
      strategy="default", export=True, learning_rate=1e-3)
  result = training.train_and_evaluate(TINY, config, workdir)
  assert result["step"] == 2
  assert set(result["train"]) == {"loss", "reconstruction", "kl_z", "kl_y"}
  assert np.isfinite(result["eval"]["loss"]) and "kl_y" in result["eval"]
  assert os.listdir(os.path.join(workdir, "train")) and os.listdir(os.path.join(workdir, "test"))
  model, run_config, step = runs.restore_model(workdir)
  assert isinstance(model, dnc_model.DNCMachine) and run_config["model_type"] == "dnc"
  assert step == 2

  # The SavedModel: every signature, without kanerva_tf's classes.
  x = _episode(length=4)
  loaded = tf.saved_model.load(runs.export_dir(workdir))
  assert set(loaded.signatures) == set(export_lib.SIGNATURES["dnc"])
  state = loaded.signatures["write"](episode=x, seed=tf.constant([5, 6]))
  got = loaded.signatures["read"](queries=x[:, :2], iterations=tf.constant(2),
                                  seed=tf.constant([7, 8]), **state)["images"]
  want = model.read(x[:, :2], model.write(x, seed=(5, 6)), 2, seed=(7, 8))
  np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
  assert run_config["dnc"] == dnc_model.DNCConfig().to_dict()  # no dnc_config: the default
  assert json.loads(loaded.signatures["config"]()["dnc_config"].numpy()) == run_config["dnc"]
  got = loaded.signatures["reconstruct"](episode=x, seed=tf.constant([1, 2]))["images"]
  np.testing.assert_allclose(got.numpy(), model.reconstruct(x, seed=(1, 2)).numpy(), atol=1e-5)
  assert loaded.signatures["config"]()["model_type"].numpy() == b"dnc"
  loss = loaded.signatures["loss"](episode=x, seed=tf.constant([3, 4]))
  np.testing.assert_allclose(float(loss["loss"]), float(model(x, seed=(3, 4))["loss"]),
                             rtol=1e-5)

  # eval.py, in process (TFDS is mocked here only): bound, k = 2 importance samples, the
  # episode-size sweep and the figures of a memory model (no interpolation).
  spec = importlib.util.spec_from_file_location("eval_script_dnc", REPO / "eval.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  fv = flags.FlagValues()
  script.define_flags(fv)
  fv(["eval.py", f"--workdir={workdir}", "--num_batches=1", "--batch_size=2",
      "--episode_sizes=4", "--class_counts=all", "--importance_samples=2"])
  script.main(["eval.py"], fv)
  with open(os.path.join(workdir, "eval", "eval.json")) as f:
    saved = json.load(f)
  assert saved["model_type"] == "dnc" and saved["addressing"] is None
  assert np.isfinite(saved["bound"]["iw_loss"]) and "kl_memory" not in saved["bound"]
  assert set(saved["figures"]) == {"reconstructions", "generation", "denoising",
                                   "bound_vs_episode_size"}
  assert any("interpolation" in note for note in saved["notes"])


@pytest.mark.slow
def test_train_py_model_dnc_on_mock_data(tmp_path):
  """--model=dnc with the DNC's sizes as flags: recorded in config.json, restored by
  restore_model; resuming with another size is refused before anything is trained."""
  workdir = tmp_path / "run"
  code = f"""
      import pytest
      import tensorflow_datasets as tfds
      with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        import train
        train.define_flags()
        argv = ["train.py", "--model=dnc", "--dataset=omniglot", "--workdir={workdir}",
                "--train_steps=2", "--steps_per_call=1", "--batch_size=2",
                "--episode_length=3", "--eval_batches=1", "--log_every=1",
                "--image_every=0", "--eval_every=2", "--strategy=default",
                "--code_size=6", "--memory_size=5", "--address_size=4",
                "--num_filters=4", "--y_size=3", "--export=false",
                "--dnc_num_reads=2", "--dnc_word_size=4", "--dnc_controller_hidden_size=8"]
        train.FLAGS(argv)
        train.main(["train.py"])
        train.FLAGS.unparse_flags()
        train.FLAGS(argv[:-1] + ["--dnc_controller_hidden_size=16", "--train_steps=4"])
        with pytest.raises(ValueError, match="different DNC config .*controller_hidden_size: "
                           "saved 8, now 16"):
          train.main(["train.py"])
      print("OK")
      """
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, timeout=600,
                        capture_output=True, text=True,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-2")
  with open(workdir / "config.json") as f:
    run_config = json.load(f)
  assert run_config["model_type"] == "dnc"
  sizes = dnc_model.DNCConfig(num_reads=2, word_size=4, controller_hidden_size=8)
  assert run_config["dnc"] == sizes.to_dict() and run_config["train"]["train_steps"] == 2
  model, _, step = runs.restore_model(str(workdir))
  assert model.dnc_config == sizes and step == 2
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert {"kl_y", "kl_z", "reconstruction"} <= set(records[0])
