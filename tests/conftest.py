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
