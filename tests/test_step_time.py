"""Tests for bench/step_time.py's `kanerva_before` configurations (the code before issue 17's
memory-path op reductions, and before those and the profile fixes of a69f5a7, rebuilt on one
model instance): they must compute the same loss and gradients as the current code, with the
old ops (einsum products, broadcasts, concatenated solve; einsum addressing, extra no-op
decoder slices) in their graph."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf
import keras

import kanerva_tf as kt

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "step_time.py")


def _step_time():
  spec = importlib.util.spec_from_file_location("step_time", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _loss_grads_and_ops(undo):
  """undo: None, "speed" (`kanerva_before`) or "all" (`kanerva_before_a69f5a7`)."""
  cfg = kt.ModelConfig.omniglot(code_size=6, memory_size=5, address_size=4, num_filters=4,
                                y_size=3, mlp_hidden_size=8, episode_length=3)
  x = tf.cast(tf.random.stateless_uniform((2, 3, 28, 28, 1), (0, 0)) < 0.2, tf.float32)
  keras.utils.set_random_seed(0)
  model = kt.KanervaMachine(cfg)
  if undo:
    _step_time()._undo_speed_fixes(tf, model)  # pylint: disable=protected-access
  if undo == "all":
    _step_time()._undo_profile_fixes(tf, model)  # pylint: disable=protected-access
  model(x[:, :1])

  @tf.function
  def loss_and_grads(x):
    with tf.GradientTape() as tape:
      loss = model(x, training=True, seed=(1, 2))["loss"]
    return loss, tape.gradient(loss, model.trainable_variables)

  loss, grads = loss_and_grads(x)
  ops = [op.type for op in loss_and_grads.get_concrete_function(x).graph.get_operations()]
  return loss, grads, ops


@pytest.mark.slow
def test_kanerva_before_a69f5a7_is_the_same_model_with_the_old_ops():
  loss, grads, ops = _loss_grads_and_ops(undo="speed")
  loss_b, grads_b, ops_b = _loss_grads_and_ops(undo="all")
  np.testing.assert_allclose(loss_b, loss, rtol=1e-6)
  for g, g_b in zip(grads, grads_b):
    np.testing.assert_allclose(g_b, g, rtol=1e-4, atol=1e-5)
  assert ops_b.count("Einsum") > ops.count("Einsum")            # einsum addressing is back
  assert ops_b.count("StridedSlice") > ops.count("StridedSlice")  # so are the no-op slices


def test_kanerva_before_is_the_same_model_with_the_old_memory_path():
  """`kanerva_before` (the code of 976c318): the same loss and gradients as the current code,
  with its ops back: R_0 and U_0 broadcast per episode, einsum products, the concatenated
  solve sliced apart, the key network run twice."""
  loss, grads, ops = _loss_grads_and_ops(undo=None)
  loss_b, grads_b, ops_b = _loss_grads_and_ops(undo="speed")
  np.testing.assert_allclose(loss_b, loss, rtol=1e-6)
  for g, g_b in zip(grads, grads_b):
    np.testing.assert_allclose(g_b, g, rtol=1e-4, atol=1e-5)
  assert "Einsum" in ops_b and "Einsum" not in ops
  assert ops_b.count("BroadcastTo") > ops.count("BroadcastTo")
  assert ops_b.count("ConcatV2") > ops.count("ConcatV2")
  assert ops_b.count("MatrixTriangularSolve") < ops.count("MatrixTriangularSolve")
  assert len(ops_b) > len(ops)


def test_worker_gets_the_same_arguments_whatever_the_flag_spelling():
  """`--rounds 7` (space) reached the worker as a stray `7` before: the worker's arguments are
  rebuilt from the parsed ones."""
  st = _step_time()
  for argv in (["--onednn", "1", "--rounds", "7", "--configs", "vae,kanerva"],
               ["--onednn=1", "--rounds=7", "--configs=vae,kanerva"]):
    args = st.parse_args(argv)
    worker = st.parse_args(["--worker"] + st._worker_argv(args))  # pylint: disable=protected-access
    assert worker.worker and (worker.rounds, worker.configs) == (7, "vae,kanerva")
    assert (worker.batch_size, worker.episode_length, worker.steps) == (16, 32, 5)
    assert args.settings == ["1"]


def test_bfloat16_configurations_are_offered():
  """`vae_bf16` / `kanerva_bf16` (TrainConfig.precision="bfloat16"), also on the CIFAR-10
  preset, for the lead's timing runs."""
  st = _step_time()
  for name in ("vae_bf16", "kanerva_bf16", "cifar_vae_bf16", "cifar_kanerva_bf16"):
    assert name in st.ALL_CONFIGS, name
  args = st.parse_args(["--configs", "vae,kanerva,vae_bf16,kanerva_bf16"])
  assert args.configs == "vae,kanerva,vae_bf16,kanerva_bf16"


def test_old_write_equals_the_current_write():
  """`old_write` (the einsum / concatenated-solve write that `kanerva_before` puts back)
  computes eqs. 9-11 as `kanerva_tf.memory._write` does, per episode and shared, in float64."""
  from kanerva_tf import memory as memory_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  b, t, k, c = 3, 5, 4, 2
  a = rng.normal(size=(k, k))
  loc, u = rng.normal(size=(k, c)), a @ a.T + np.eye(k)
  w, z = rng.normal(size=(b, t, k)), rng.normal(size=(b, t, c))
  obs_var = rng.uniform(0.5, 1.5, size=(b, t))
  want = memory_lib._write(*map(tf.constant, (loc, u, w, z, obs_var)))  # shared memory
  got = _step_time().old_write(*map(tf.constant, (np.broadcast_to(loc, (b, k, c)),
                                                  np.broadcast_to(u, (b, k, k)), w, z, obs_var)))
  for g, x in zip(got, want):
    np.testing.assert_allclose(g, x, rtol=1e-12, atol=1e-12)
