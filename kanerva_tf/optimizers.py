"""Adam with one fused update op per variable, for the custom training loop.

Keras 3's `keras.optimizers.Adam` updates each variable with ~15 small graph ops (casts,
powers, `assign_add` of m and v, `assign_sub` of the variable). The Kanerva Machine has 15
more variables than its VAE (addresses, key network, prior, memory noise), so on a CPU step
of ~100 ms those ops alone were ~400 of the ~600 ops the memory adds (issue 17,
bench/profile_step.py). `FusedAdam` does the same update with TensorFlow's
`ResourceApplyAdam` kernel, one op per variable:

  lr_t = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)
  m <- beta_1 m + (1 - beta_1) g,   v <- beta_2 v + (1 - beta_2) g^2
  theta <- theta - lr_t m / (sqrt(v) + epsilon)

which is Keras' Adam (Kingma & Ba 2015, with Keras' placement of epsilon) up to rounding
(Keras writes m + (g - m)(1 - beta_1)). The optimizer's variables (iterations, m, v) are
Keras Adam's, so checkpoints and `.keras` files move freely between the two. It is also exact
in float64, where Keras' Adam rounds its constants (1 - beta_1, ...) to float32.

Measured (bench/results/step_time_fused_adam_2026-12-03.md): fewer ops, but no measurable
change of the training-step time on this 2-core CPU (KM 0.95-1.02x Keras' Adam over 5 runs).
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kanerva_tf")
class FusedAdam(keras.optimizers.Adam):
  """`keras.optimizers.Adam` whose dense update is one `ResourceApplyAdam` op per variable.

  Same arguments as `keras.optimizers.Adam`. `amsgrad=True`, sparse gradients
  (`tf.IndexedSlices`) and non-TensorFlow backends fall back to Keras' own update.
  """

  def update_step(self, gradient, variable, learning_rate):
    if (self.amsgrad or isinstance(gradient, tf.IndexedSlices)
        or keras.backend.backend() != "tensorflow"):
      return super().update_step(gradient, variable, learning_rate)
    dtype = variable.dtype
    local_step = tf.cast(self.iterations + 1, dtype)
    # tf.constant, not tf.cast: a cast would round the Python floats to float32 first.
    beta_1 = tf.constant(self.beta_1, dtype)
    beta_2 = tf.constant(self.beta_2, dtype)
    index = self._get_variable_index(variable)
    m = self._momentums[index]
    v = self._velocities[index]
    return tf.raw_ops.ResourceApplyAdam(
        var=_handle(variable), m=_handle(m), v=_handle(v),
        beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
        lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
        epsilon=tf.constant(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
        use_locking=False)


def _handle(variable):
  """The resource handle of a Keras or tf.Variable (inside `strategy.extended.update`, the
  handle of this replica's copy of a mirrored variable)."""
  if isinstance(variable, keras.Variable):
    variable = variable.value
  return variable.handle
