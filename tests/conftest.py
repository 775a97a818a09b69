"""Shared pytest setup: quiet TensorFlow logs, Keras on TensorFlow, oneDNN kernels on.

oneDNN is what `kanerva_tf` and the scripts turn on (see the `kanerva_tf` docstring); it is set
here too because test modules import TensorFlow before `kanerva_tf`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
