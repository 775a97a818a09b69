"""kanerva_tf.optimizers.FusedAdam against Keras' Adam (the independent reference)."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kanerva_tf.optimizers import FusedAdam

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problem(dtype):
  """Two variables (a matrix and a vector) and a smooth loss of them."""
  rng = np.random.default_rng(0)
  a0 = rng.normal(size=(4, 3)).astype(dtype)
  b0 = rng.normal(size=(3,)).astype(dtype)
  x = tf.constant(rng.normal(size=(5, 4)).astype(dtype))

  def loss(a, b):
    return tf.reduce_sum(tf.tanh(x @ a + b) ** 2) + tf.reduce_sum(a ** 4)
  return a0, b0, loss


def _train(optimizer, dtype, steps, init=None):
  a0, b0, loss = _problem(dtype)
  a, b = keras.Variable(a0, name="a"), keras.Variable(b0, name="b")
  optimizer.build([a, b])
  if init is not None:
    init(optimizer, a, b)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      value = loss(a, b)
    optimizer.apply(tape.gradient(value, [a, b]), [a, b])

  for _ in range(steps):
    step()
  return optimizer, a, b


def _slots(optimizer):
  return [np.asarray(v) for v in optimizer.variables]


def _numpy_adam(steps, learning_rate, beta_1, beta_2, epsilon):
  """Kingma & Ba's Adam with Keras' epsilon placement, in float64 numpy; the learning rate is
  rounded to float32 as Keras stores it."""
  a0, b0, loss = _problem("float64")
  params = [a0.copy(), b0.copy()]
  m = [np.zeros_like(p) for p in params]
  v = [np.zeros_like(p) for p in params]
  lr = float(np.float32(learning_rate))
  for t in range(1, steps + 1):
    with tf.GradientTape() as tape:
      tensors = [tf.constant(p) for p in params]
      tape.watch(tensors)
      value = loss(*tensors)
    grads = [g.numpy() for g in tape.gradient(value, tensors)]
    alpha = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    for i, g in enumerate(grads):
      m[i] = beta_1 * m[i] + (1 - beta_1) * g
      v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
      params[i] = params[i] - alpha * m[i] / (np.sqrt(v[i]) + epsilon)
  return params, m, v


_HYPER = dict(learning_rate=0.05, beta_1=0.8, beta_2=0.95, epsilon=1e-6)


def test_fused_adam_matches_a_numpy_adam_in_float64():
  (want_a, want_b), want_m, want_v = _numpy_adam(7, **_HYPER)
  opt, a, b = _train(FusedAdam(**_HYPER), "float64", steps=7)
  a0, _, _ = _problem("float64")
  assert np.abs(want_a - a0).max() > 0.1   # the steps moved the variables
  np.testing.assert_allclose(np.asarray(a), want_a, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(np.asarray(b), want_b, rtol=1e-12, atol=1e-14)
  assert int(opt.iterations) == 7
  for got, want in zip(opt._momentums + opt._velocities, want_m + want_v):  # pylint: disable=protected-access
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_adam_takes_keras_adams_steps(dtype):
  """Keras' Adam rounds its Python constants (1 - beta_1, ...) to float32 even for float64
  variables, so the two agree to float32 rounding (~1e-7 relative), not to float64's."""
  want_opt, want_a, want_b = _train(keras.optimizers.Adam(**_HYPER), dtype, steps=7)
  got_opt, got_a, got_b = _train(FusedAdam(**_HYPER), dtype, steps=7)
  np.testing.assert_allclose(np.asarray(got_a), np.asarray(want_a), rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_b), np.asarray(want_b), rtol=2e-6, atol=1e-6)
  assert int(got_opt.iterations) == int(want_opt.iterations) == 7
  for got, want in zip(_slots(got_opt), _slots(want_opt)):   # iterations, lr, m and v
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)


def test_fused_adam_checkpoints_are_keras_adams():
  """A tf.train.Checkpoint of Keras' Adam restores into FusedAdam (same variables), and the
  restored run continues like Keras' Adam would (to float32 rounding, see above)."""
  with tf.device("CPU"):
    ckpt_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fused_adam_{os.getpid()}")
    opt, a, b = _train(keras.optimizers.Adam(0.05), "float64", steps=3)
    path = tf.train.Checkpoint(optimizer=opt, a=a.value, b=b.value).write(ckpt_dir + "/c")
    _, want_a, _ = _train(keras.optimizers.Adam(0.05), "float64", steps=5)

    def restore(optimizer, a, b):
      tf.train.Checkpoint(optimizer=optimizer, a=a.value, b=b.value).read(
          path).assert_consumed()
    got_opt, got_a, _ = _train(FusedAdam(0.05), "float64", steps=2, init=restore)
  assert int(got_opt.iterations) == 5
  np.testing.assert_allclose(np.asarray(got_a), np.asarray(want_a), rtol=2e-6, atol=1e-6)  # Keras vs fused rounding


def test_fused_adam_serializes_and_falls_back_for_amsgrad():
  opt = FusedAdam(learning_rate=0.01, beta_1=0.7, amsgrad=True)
  clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
  assert type(clone) is FusedAdam and clone.beta_1 == 0.7 and clone.amsgrad
  _, want_a, _ = _train(keras.optimizers.Adam(0.05, amsgrad=True), "float64", steps=4)
  _, got_a, _ = _train(FusedAdam(0.05, amsgrad=True), "float64", steps=4)
  np.testing.assert_array_equal(np.asarray(got_a), np.asarray(want_a))  # Keras' own update


def test_fused_adam_under_mirrored_strategy_updates_every_replica_like_keras_adam():
  """Two logical CPU devices (set before TensorFlow starts, so in a subprocess): FusedAdam
  inside `strategy.run` leaves both replicas' copies equal to Keras' Adam's."""
  code = textwrap.dedent("""
      import numpy as np, tensorflow as tf, keras
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      from kanerva_tf.optimizers import FusedAdam
      strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
      x = tf.constant(np.random.default_rng(0).normal(size=(4, 3)), tf.float32)

      def run(make):
        with strategy.scope():
          w = keras.Variable(np.ones((3, 2), np.float32))
          opt = make(); opt.build([w])
        @tf.function
        def step(x):
          def replica(xs):
            with tf.GradientTape() as tape:
              loss = tf.reduce_sum(tf.sin(xs @ w))
            opt.apply([tape.gradient(loss, w)], [w])
          strategy.run(replica, args=(x,))
        data = iter(strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(x).repeat().unbatch().batch(4)))
        for _ in range(4):
          step(next(data))
        return [c.numpy() for c in w.value.values]

      got, want = run(lambda: FusedAdam(0.1)), run(lambda: keras.optimizers.Adam(0.1))
      assert len(got) == 2, len(got)
      np.testing.assert_allclose(got[0], got[1], rtol=0, atol=0)
      np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
      assert np.abs(want[0] - 1).max() > 0.1
      print("ok")
  """)
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=300,
                        capture_output=True, text=True)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
