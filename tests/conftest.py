"""Shared pytest setup: quiet TensorFlow logs, Keras on TensorFlow, oneDNN kernels on.

oneDNN is what `kanerva_tf` and the scripts turn on (see the `kanerva_tf` docstring); it is set
here too because test modules import TensorFlow before `kanerva_tf`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def mock_omniglot():
  """TFDS omniglot mocked with 40 generated examples per split (no data on disk needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  data_lib.clear_cache()
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    yield
  data_lib.clear_cache()


@pytest.fixture
def binary_episodes():
  """`binary_episodes(num_batches, batch, length, shape, seed)`: a dataset of num_batches
  batches of random binary episodes `[B, T, H, W, D]` (each pixel 1 with probability 0.3)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def make(num_batches, batch, length, shape, seed):
    x = tf.random.stateless_uniform((num_batches, batch, length) + shape, (seed, 0))
    return tf.data.Dataset.from_tensor_slices(tf.cast(x < 0.3, tf.float32))
  return make


@pytest.fixture
def check_png():
  """A check that a file is a PNG image with content: `check_png(path, min_bytes=2000)`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from matplotlib import image as mpl_image  # pylint: disable=g-import-not-at-top

  def check(path, min_bytes=2000):
    assert path.is_file(), path
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > min_bytes, (path, len(raw))
    image = mpl_image.imread(str(path))
    assert image.ndim == 3 and min(image.shape[:2]) > 50 and np.ptp(image) > 0, image.shape
  return check
