r"""Decoder forward + backward with the old crop (StridedSlice) against the current one (Slice).

  python bench/decoder_crop.py

The old crop is a subclass of `kanerva_tf.networks.Decoder` in this file; both run in one
process, alternated, on codes [16, 32, 100] (the Omniglot step). Result:
bench/results/decoder_crop_2026-12-03.md.
"""

import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kanerva_tf import networks  # pylint: disable=g-import-not-at-top,wrong-import-position
from kanerva_tf.networks import NUM_DOWNSAMPLINGS  # pylint: disable=g-import-not-at-top


class OldDecoder(networks.Decoder):
  """`networks.Decoder` before 2026-12-03: the crop as h[:, :th, :tw] (a StridedSlice)."""

  def call(self, inputs):
    z = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
    batch_shape = ops.shape(z)[:-1]
    z = ops.reshape(z, (-1, z.shape[-1]))
    h3, w3 = self._sizes[-1]
    h = ops.reshape(self.projection(z), (-1, h3, w3, self.num_filters))
    for i in range(NUM_DOWNSAMPLINGS):
      h = self.deconvs[i](ops.relu(self.res_blocks[i](h)))
      th, tw = self._sizes[NUM_DOWNSAMPLINGS - i - 1]
      if (th, tw) != tuple(h.shape[1:3]):
        h = h[:, :th, :tw, :]
    return ops.reshape(h, tuple(batch_shape) + self.image_shape[:2] + (self.out_channels,))

z = tf.random.normal([16, 32, 100])
fns = {}
for name, cls in (("old", OldDecoder), ("new", networks.Decoder)):
  keras.utils.set_random_seed(0)
  d = cls(16, (28, 28, 1)); d(z)
  @tf.function
  def step(z, d=d):
    with tf.GradientTape() as t:
      l = tf.reduce_sum(tf.square(d(z)))
    return t.gradient(l, d.trainable_variables)
  step(z)
  fns[name] = step
times = {"old": [], "new": []}
for r in range(15):
  for name in ("old", "new") if r % 2 else ("new", "old"):
    t0 = time.perf_counter()
    for _ in range(10): g = fns[name](z)
    g[0].numpy()
    times[name].append((time.perf_counter() - t0) / 10 * 1e3)
for k, v in times.items(): print(k, "median ms", round(float(np.median(v)), 2), "min", round(min(v), 2))
print("ratio new/old (median of per-round)", round(float(np.median(np.array(times["new"]) / np.array(times["old"]))), 3))
