"""Tests of kanerva_tf.keras_fit: Keras compile / fit / evaluate / save of the package's models.

Tiny models on synthetic binary episodes (no dataset needed); each fit traces its step
functions once, so the tests share fitted models through module fixtures.
"""

import glob
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

import kanerva_tf as kt
from kanerva_tf import keras_fit
from kanerva_tf import runs
from kanerva_tf import training
from kanerva_tf.dnc_model import DNCMachine
from kanerva_tf.optimizers import FusedAdam

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = kt.ModelConfig(image_shape=(8, 8, 1), code_size=6, memory_size=5, address_size=4,
                      num_filters=4, y_size=3, mlp_hidden_size=8, episode_length=4)
B, T = 3, 4
SEED = 7


def _episodes(num_batches, seed):
  """Binary episodes [num_batches * B, T, 8, 8, 1] and labels [num_batches * B, T]."""
  x = tf.cast(tf.random.stateless_uniform((num_batches * B, T, 8, 8, 1), (seed, 0)) < 0.3,
              tf.float32)
  return x, tf.zeros((num_batches * B, T), tf.int64)


def _train_ds(seed=0):
  return tf.data.Dataset.from_tensor_slices(_episodes(2, seed)[0]).batch(B)  # episodes only


def _test_ds():
  return tf.data.Dataset.from_tensor_slices(_episodes(2, 99)).batch(B)  # (episodes, labels)


def _built(cls, init_seed=0):
  keras.utils.set_random_seed(init_seed)
  model = cls(TINY)
  model(_episodes(1, 0)[0])  # BackupAndRestore and a comparable init need built weights
  return model


def _weights(model):
  return [v.numpy() for v in model.variables]


def _assert_same_weights(a, b):
  assert len(a) == len(b)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)


# ----------------------------------------------------------------------------- Kanerva Machine
@pytest.fixture(scope="module")
def fitted_km(tmp_path_factory):
  """A Kanerva Machine fitted 2 epochs with validation and TensorBoard / ModelCheckpoint."""
  tmp = tmp_path_factory.mktemp("km")
  model = _built(kt.KanervaMachine)
  variables_before = [v.path for v in model.variables]
  model.compile(FusedAdam(1e-2), seed=SEED)  # saved and loaded with the model below
  assert [v.path for v in model.variables] == variables_before  # compile adds no variables
  callbacks = [
      keras.callbacks.TensorBoard(str(tmp / "logs")),
      keras.callbacks.ModelCheckpoint(str(tmp / "ckpt-{epoch}.weights.h5"),
                                      save_weights_only=True),
      keras.callbacks.ModelCheckpoint(str(tmp / "best.keras"), monitor="val_loss",
                                      save_best_only=True),
  ]
  history = model.fit(_train_ds(), epochs=2, validation_data=_test_ds(), callbacks=callbacks,
                      verbose=0)
  return model, history, tmp


def test_history_reports_every_loss_term(fitted_km):
  model, history, _ = fitted_km
  terms = kt.KanervaMachine.loss_terms
  assert set(history.history) == set(terms) | {f"val_{k}" for k in terms}
  assert history.epoch == [0, 1] and model.optimizer.iterations.numpy() == 4
  for prefix in ("", "val_"):
    h = {k: np.array(history.history[prefix + k]) for k in terms}
    assert np.all(np.isfinite(np.concatenate(list(h.values()))))
    # Each tracker holds its own term: the loss is the sum of its three (kl_memory is not).
    np.testing.assert_allclose(h["loss"], h["reconstruction"] + h["kl_y"] + h["kl_z"],
                               rtol=1e-5)
    assert np.all(h["kl_memory"] > 0)
  assert history.history["loss"][1] < history.history["loss"][0]  # it trains


def test_evaluate_is_the_model_bound_under_its_seed_and_repeats(fitted_km):
  model, history, _ = fitted_km
  first = model.evaluate(_test_ds(), return_dict=True, verbose=0)
  second = model.evaluate(_test_ds(), return_dict=True, verbose=0)
  assert first == second
  # Batch i: the model's call, training=False, seed replica_seed(seed + 1, i, 0, 1).
  want = {k: [] for k in model.loss_terms}
  for i, (x, _) in enumerate(_test_ds()):
    out = model(x, training=False, seed=keras_fit.replica_seed(SEED + 1, i, 0, 1))
    for k in want:
      want[k].append(float(out[k]))
  for k, values in want.items():
    np.testing.assert_allclose(first[k], np.mean(values), rtol=1e-5, err_msg=k)
  # fit's last validation ran with the same weights and seeds.
  np.testing.assert_allclose(history.history["val_loss"][-1], first["loss"], rtol=1e-6)


def test_tensorboard_and_model_checkpoint_write_their_files(fitted_km):
  model, _, tmp = fitted_km
  for split in ("train", "validation"):
    tags = set()
    for path in glob.glob(str(tmp / "logs" / split / "events.out.tfevents.*")):
      for event in tf.compat.v1.train.summary_iterator(path):
        tags.update(value.tag for value in event.summary.value)
    assert {"epoch_loss", "epoch_kl_memory", "epoch_kl_y"} <= tags, (split, tags)
  # Weights-only checkpoints: the one of the last epoch holds the model's weights.
  assert sorted(os.listdir(tmp))[:2] == ["best.keras", "ckpt-1.weights.h5"]
  restored = _built(kt.KanervaMachine, init_seed=1)
  restored.load_weights(str(tmp / "ckpt-2.weights.h5"))
  _assert_same_weights(_weights(restored), _weights(model))
  # The full checkpoint loads as a compiled KanervaMachine.
  best = keras.models.load_model(str(tmp / "best.keras"))
  assert isinstance(best, kt.KanervaMachine) and best.config == TINY


def test_save_and_load_model_round_trip(fitted_km, tmp_path):
  model, _, _ = fitted_km
  path = str(tmp_path / "km.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert type(loaded) is kt.KanervaMachine and loaded.config == model.config
  _assert_same_weights(_weights(loaded), _weights(model))
  x = _episodes(1, 5)[0]
  for training_ in (False, True):
    a = model(x, training=training_, seed=(1, 2))
    b = loaded(x, training=training_, seed=(1, 2))
    for k in model.loss_terms:
      assert float(a[k]) == float(b[k]), k
  assert type(loaded.optimizer) is FusedAdam
  # Compiled as saved: the optimizer's state and the seed, so training continues alike.
  assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
  _assert_same_weights([v.numpy() for v in loaded.optimizer.variables],
                       [v.numpy() for v in model.optimizer.variables])
  assert loaded.get_compile_config()["seed"] == SEED
  # The custom loop's checkpoints and the export see the same variables.
  assert len(runs.checkpointed_variables(loaded)) == len(runs.checkpointed_variables(model))


# ----------------------------------------------------------------------------- VAE
class _Interrupt(keras.callbacks.Callback):
  def on_epoch_begin(self, epoch, logs=None):
    if epoch == 1:
      raise RuntimeError("interrupted")


class _FirstStep(keras.callbacks.Callback):
  def on_train_batch_end(self, batch, logs=None):
    if self.model.optimizer.iterations.numpy() == 1:
      self.logs, self.weights = dict(logs), _weights(self.model)


def _vae_run(callbacks=()):
  """Two epochs of 2 steps, run eagerly (the Kanerva Machine's fixture runs the traced
  steps; tracing them again for the VAE would double the time of this file)."""
  model = _built(kt.VAE)
  model.compile(keras.optimizers.Adam(1e-2), seed=SEED, run_eagerly=True)
  history = model.fit(_train_ds(), epochs=2, callbacks=list(callbacks), verbose=0)
  return model, history


@pytest.fixture(scope="module")
def fitted_vae():
  first_step = _FirstStep()
  model, history = _vae_run([first_step])
  return model, history, first_step


def test_vae_first_step_is_the_custom_loop_step(fitted_vae):
  """Step 0 of fit = one Adam step on the mean per-episode loss of the VAE's call, sampled
  with the seed of step 0 of `train_and_evaluate` (one replica)."""
  assert training.replica_seed is keras_fit.replica_seed
  _, _, first_step = fitted_vae
  reference = _built(kt.VAE)
  x = next(iter(_train_ds()))
  optimizer = keras.optimizers.Adam(1e-2)
  with tf.GradientTape() as tape:
    out = reference(x, training=True, seed=training.replica_seed(SEED, 0, 0, 1))
    loss = tf.reduce_mean(out["per_example_loss"])
  optimizer.apply(tape.gradient(loss, reference.trainable_variables),
                  reference.trainable_variables)
  assert set(first_step.logs) == set(kt.VAE.loss_terms)
  for k in kt.VAE.loss_terms:
    np.testing.assert_allclose(first_step.logs[k], float(out[k]), rtol=1e-5, err_msg=k)
  for a, b in zip(first_step.weights, _weights(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vae_fit_is_reproducible_and_backup_and_restore_resumes_it(fitted_vae, tmp_path):
  """An interrupted run resumed by BackupAndRestore in a fresh model ends with the weights
  of the uninterrupted run."""
  uninterrupted, history, _ = fitted_vae
  assert set(history.history) == set(kt.VAE.loss_terms)
  backup = str(tmp_path / "backup")
  with pytest.raises(RuntimeError, match="interrupted"):
    _vae_run([keras.callbacks.BackupAndRestore(backup), _Interrupt()])
  assert sorted(os.listdir(backup)) == ["latest.weights.h5", "training_metadata.json"]
  with open(os.path.join(backup, "training_metadata.json")) as f:
    assert json.load(f)["epoch"] == 1
  resumed, resumed_history = _vae_run([keras.callbacks.BackupAndRestore(backup)])
  assert resumed_history.epoch == [1]
  assert resumed.optimizer.iterations.numpy() == uninterrupted.optimizer.iterations.numpy()
  # Weights, Adam state and the step counter (hence the sampling seeds) were restored: the
  # resumed run ends where the uninterrupted one did.
  for a, b in zip(_weights(resumed), _weights(uninterrupted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(resumed_history.history["loss"], history.history["loss"][1:],
                             rtol=1e-5)
  assert not os.path.exists(backup)  # removed once training completes


def test_vae_save_and_load_model_round_trip(fitted_vae, tmp_path):
  model, _, _ = fitted_vae
  path = str(tmp_path / "vae.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert type(loaded) is kt.VAE and loaded.config == model.config
  x = _episodes(1, 5)[0]
  for training_ in (False, True):
    a, b = model(x, training=training_, seed=(3, 4)), loaded(x, training=training_, seed=(3, 4))
    for k in model.loss_terms:
      assert float(a[k]) == float(b[k]), k
  assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()


# ----------------------------------------------------------------------------- DNC baseline
@pytest.mark.slow
def test_dnc_fit_reports_its_terms_and_saves(tmp_path):
  model = _built(DNCMachine)
  model.compile(keras.optimizers.Adam(1e-2), seed=SEED, run_eagerly=True)
  history = model.fit(_train_ds(), epochs=1, verbose=0)
  assert set(history.history) == set(DNCMachine.loss_terms) == {
      "loss", "reconstruction", "kl_y", "kl_z"}
  assert np.isfinite(history.history["loss"][0])
  path = str(tmp_path / "dnc.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert type(loaded) is DNCMachine and loaded.dnc_config == model.dnc_config
  x = _episodes(1, 5)[0]
  assert float(loaded(x, seed=(1, 1))["loss"]) == float(model(x, seed=(1, 1))["loss"])


# ----------------------------------------------------------------------------- distribution
@pytest.mark.slow
def test_mirrored_fit_and_evaluate_match_the_one_device_computation():
  """Two logical CPU devices: fit's step is the global-batch mean (each half with that
  replica's seed) and evaluate's batch the mean of the halves (seed + 1)."""
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
      import numpy as np, tensorflow as tf, keras
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      import kanerva_tf as kt
      from kanerva_tf import keras_fit
      cfg = kt.ModelConfig(image_shape=(8, 8, 1), code_size=6, memory_size=5, address_size=4,
                           num_filters=4, y_size=3, mlp_hidden_size=8, episode_length=4)
      x = tf.cast(tf.random.stateless_uniform((4, 4, 8, 8, 1), (1, 2)) < 0.3, tf.float32)
      keys = kt.KanervaMachine.loss_terms
      strategy = tf.distribute.MirroredStrategy(
          [d.name for d in tf.config.list_logical_devices("CPU")])
      assert strategy.num_replicas_in_sync == 2
      with strategy.scope():
        keras.utils.set_random_seed(0)
        model = kt.KanervaMachine(cfg); model(x)
        model.compile(keras.optimizers.SGD(0.1), seed=7)
      init = [v.numpy() for v in model.trainable_variables]
      logs = model.fit(tf.data.Dataset.from_tensors(x), verbose=0).history
      updated = [v.numpy() for v in model.trainable_variables]
      ev = model.evaluate(tf.data.Dataset.from_tensors(x), return_dict=True, verbose=0)

      ref = kt.KanervaMachine(cfg); ref(x)
      for v, a in zip(ref.trainable_variables, init):
        v.assign(a)
      grads, want, want_eval = None, {k: 0. for k in keys}, {k: 0. for k in keys}
      for r in range(2):
        half = x[2 * r: 2 * r + 2]
        with tf.GradientTape() as tape:
          out = ref(half, training=True, seed=keras_fit.replica_seed(7, 0, r, 2))
          loss = tf.reduce_sum(out["per_example_loss"]) / 4.
        g = tape.gradient(loss, ref.trainable_variables)
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
        for k in keys:
          want[k] += float(out[k]) / 2
      for k in keys:
        np.testing.assert_allclose(logs[k][0], want[k], rtol=1e-5, err_msg=k)
      for a, u, g in zip(init, updated, grads):
        np.testing.assert_allclose(u, a - 0.1 * g.numpy(), rtol=1e-4, atol=1e-6)
      for v, a in zip(ref.trainable_variables, updated):
        v.assign(a)
      for r in range(2):
        out = ref(x[2 * r: 2 * r + 2], training=False, seed=keras_fit.replica_seed(8, 0, r, 2))
        for k in keys:
          want_eval[k] += float(out[k]) / 2
      for k in keys:
        np.testing.assert_allclose(ev[k], want_eval[k], rtol=1e-5, err_msg=k)
      print("OK")
      """)], cwd=REPO, timeout=600, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "OK" in proc.stdout


# ----------------------------------------------------------------------------- compile
def test_compile_refuses_a_loss_metrics_and_bad_seeds():
  model = kt.VAE(TINY)
  with pytest.raises(ValueError, match=r"loss= is not used; the loss is the model's own"):
    model.compile("adam", loss="mse")
  with pytest.raises(ValueError, match="metrics= is not used"):
    model.compile("adam", metrics=["mae"])
  for seed in (-1, 2**31, 1.5, True):
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^31 - 1\)"):
      model.compile("adam", seed=seed)
  model.compile()  # default: the custom loop's Adam and learning rate
  assert isinstance(model.optimizer, FusedAdam)
  np.testing.assert_allclose(float(model.optimizer.learning_rate), 3e-4)
  assert [m.name for m in model.metrics] == list(kt.VAE.loss_terms)


def test_fit_refuses_sample_weights(fitted_vae):
  model, _, _ = fitted_vae
  x = _episodes(1, 0)[0]
  with pytest.raises(ValueError, match="sample weights are not supported"):
    model.train_step((x, None, tf.ones([B])))  # refused before any update
