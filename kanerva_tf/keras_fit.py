"""Keras-native training of the package's models: `compile`, `fit`, `evaluate`, `save`.

The custom distributed loop (`kanerva_tf.training`, `train.py`) is the main path: it adds the
run directory, resume, NaN checks, KL(y) warm-up, periodic evaluation and export. This module
is the second path a Keras user expects. `KerasFit` is a base class of `KanervaMachine`, `VAE`
and `DNCMachine`; with it

```python
import keras, kanerva_tf as kt
from kanerva_tf import data

model = kt.KanervaMachine(kt.ModelConfig.omniglot())
model.compile(optimizer=keras.optimizers.Adam(3e-4), seed=0)
train = data.episode_dataset("omniglot", "train", batch_size=16, episode_length=32, seed=0)
test = data.episode_dataset("omniglot", "test", batch_size=16, episode_length=32, seed=1,
                            repeat=False, num_episodes=64)
history = model.fit(train, steps_per_epoch=500, epochs=4, validation_data=test,
                    callbacks=[keras.callbacks.TensorBoard("logs")])
history.history["kl_memory"], model.evaluate(test, return_dict=True)
model.save("km.keras")        # keras.models.load_model("km.keras") restores it, optimizer too
```

The loss is the model's own: `train_step` minimises the `per_example_loss` its `call`
returns (the negative bound, eq. 12 / T for the Kanerva Machine, eq. 1 for the VAE),
averaged with `tf.nn.compute_average_loss` as the custom loop does, and the logs hold the
mean over the epoch of every scalar term it returns (`loss_terms`: `loss`, `reconstruction`,
`kl_z`, and for the Kanerva Machine `kl_y`, `kl_memory`; validation ones prefixed `val_`).

Data: a dataset (or array) of episodes `[B, T, H, W, D]`, float32 in [0, 1], or of
(episodes, labels) pairs (labels ignored), as `kanerva_tf.data.episode_dataset` yields. An
infinite training dataset needs `steps_per_epoch`, an infinite test dataset `steps`.

Randomness is stateless and depends only on the compile `seed` and counters, never on
global RNG state:
  * training step i samples with `replica_seed(seed, i, replica, replicas)`, i =
    `optimizer.iterations` before the update: the seed of step i of `train_and_evaluate`,
    so a run restored with its optimizer (`BackupAndRestore`, `load_model`) continues
    with the noise it would have drawn;
  * batch i of every `evaluate` call (and of `fit`'s validation) samples with
    `replica_seed(seed + 1, i, replica, replicas)` and `training=False` (Gaussian
    likelihood: dequantised, as `evaluation.evaluate_bound`), so the same weights, data
    and seed give the same numbers on every call.

The compile state (the seed, the loss trackers and the batch counter of `evaluate`) is
held outside Keras' and TensorFlow's variable tracking: `model.variables`, and so the
checkpoints of `kanerva_tf.runs` and the SavedModel export, are the same whether or not the
model was compiled.

Shapes follow the package glossary (`kanerva_tf/__init__.py`).
"""

import keras
import tensorflow as tf

from kanerva_tf import optimizers

__all__ = ["KerasFit", "replica_seed"]

_DEFAULT_LEARNING_RATE = 3e-4  # TrainConfig.learning_rate


def replica_seed(seed, step, replica_id, num_replicas):
  """The stateless sampling seed of one replica at one step: int32 `[2]`,
  `[seed mod 2^31, step * num_replicas + replica_id]` (also the custom loop's)."""
  return tf.stack([tf.constant(seed % 2**31, tf.int32), tf.cast(
      tf.cast(step, tf.int64) * num_replicas + tf.cast(replica_id, tf.int64), tf.int32)])


class _CompileState:
  """What `compile` adds: a plain object, so neither Keras nor TF tracks its variables."""

  def __init__(self, seed, loss_terms):
    self.seed = seed
    self.trackers = [keras.metrics.Mean(name=name) for name in loss_terms]
    self.eval_batch = keras.Variable(0, dtype="int64", trainable=False,
                                     aggregation="only_first_replica", name="eval_batch")


class KerasFit:
  """`compile` / `fit` / `evaluate` / `save` for a `keras.Model` whose
  `call(episode, training, seed, dequantize)` returns a dict with the scalar `loss_terms`
  and `per_example_loss` `[B]` (see the module docstring). Put it before `keras.Model`
  among the base classes."""

  loss_terms = ("loss", "reconstruction", "kl_z")

  def compile(self, optimizer=None, *, seed=0, jit_compile=False, **kwargs):
    """Configures `fit` and `evaluate`.

    Args:
      optimizer: a Keras optimizer or its name; None = the custom loop's optimizer,
        `kanerva_tf.optimizers.FusedAdam(3e-4)` (Keras' Adam with one op per variable).
      seed: int in [0, 2^31 - 1), seed of all sampling in `fit` and `evaluate`.
      jit_compile: XLA-compile the steps (off by default, as `TrainConfig.jit_compile`;
        Keras' "auto" would turn it on).
      **kwargs: other `keras.Model.compile` arguments (`steps_per_execution`,
        `run_eagerly`, ...). Not `loss` or `metrics`: the loss is the model's bound.
    """
    for name in ("loss", "loss_weights", "metrics", "weighted_metrics"):
      if kwargs.get(name) is not None:
        raise ValueError(
            f"{type(self).__name__}.compile: {name}= is not used; the loss is the model's own "
            f"negative bound and fit reports its terms {list(self.loss_terms)}.")
      kwargs.pop(name, None)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31 - 1:
      raise ValueError(f"{type(self).__name__}.compile: seed must be an int in [0, 2^31 - 1); "
                       f"got {seed!r}.")
    if optimizer is None:
      optimizer = optimizers.FusedAdam(_DEFAULT_LEARNING_RATE)
    super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
    self._compile_state = _CompileState(seed, self.loss_terms)
    if self.built and not self.optimizer.built:
      # Now rather than in the first traced step, which would then be traced twice.
      self.optimizer.build(self.trainable_variables)

  def get_compile_config(self):
    config = super().get_compile_config()
    if config and getattr(self, "_compile_state", None) is not None:
      config = {**config, "seed": self._compile_state.seed}
    return config

  def compile_from_config(self, config):
    """Compiles a loaded model as it was saved (Keras skips this for a custom `compile`)."""
    config = dict(keras.saving.deserialize_keras_object(config))
    for name in ("loss", "loss_weights", "metrics", "weighted_metrics"):
      config.pop(name, None)
    self.compile(**config)  # builds the optimizer of a built model: its variables load next

  @property
  def metrics(self):
    state = getattr(self, "_compile_state", None)
    return list(state.trackers) if state is not None else []

  # -- the steps
  def _episodes(self, data):
    x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if sample_weight is not None:
      raise ValueError(f"{type(self).__name__}.fit/evaluate: sample weights are not supported; "
                       "every episode counts once.")
    return x

  def _replica_seed(self, seed, counter):
    ctx = tf.distribute.get_replica_context()
    replica = ctx.replica_id_in_sync_group if ctx is not None else 0
    return replica_seed(seed, counter, replica, self.distribute_strategy.num_replicas_in_sync)

  def _update_trackers(self, out, x):
    batch = tf.shape(x)[0]
    for tracker in self._compile_state.trackers:
      tracker.update_state(out[tracker.name], sample_weight=batch)
    return {tracker.name: tracker.result() for tracker in self._compile_state.trackers}

  def train_step(self, data):
    x = self._episodes(data)
    seed = self._replica_seed(self._compile_state.seed, self.optimizer.iterations)
    with tf.GradientTape() as tape:
      out = self(x, training=True, seed=seed)
      # Mean over the global batch: the optimizer sums the replicas' gradients.
      loss = self.optimizer.scale_loss(tf.nn.compute_average_loss(out["per_example_loss"]))
    variables = self.trainable_variables  # after the call: an unbuilt model builds in it
    self.optimizer.apply(tape.gradient(loss, variables), variables)
    return self._update_trackers(out, x)

  def test_step(self, data):
    x = self._episodes(data)
    state = self._compile_state
    seed = self._replica_seed(state.seed + 1, state.eval_batch)
    state.eval_batch.assign_add(1)
    out = self(x, training=False, seed=seed, dequantize=self.config.likelihood == "gaussian")
    return self._update_trackers(out, x)

  def evaluate(self, *args, **kwargs):
    """`keras.Model.evaluate`; batch i of every call samples with the same seed (module
    docstring), so repeated calls on the same data give the same result."""
    state = getattr(self, "_compile_state", None)
    if state is not None:
      state.eval_batch.assign(0)
    return super().evaluate(*args, **kwargs)
