"""kanerva_tf: The Kanerva Machine (Wu, Wayne, Graves, Lillicrap; ICLR 2018) in TF2 / Keras 3 / TFP.

Shape glossary, used in every docstring, comment and einsum string of the package:

  B  batch of episodes
  T  episode length (number of observations written to / read from one memory)
  N  number of queries read from a memory (iterative reading, generation)
  K  memory rows (memory size)
  C  code size (columns of the memory, dimension of z)
  S  address / key size (dimension of y and of the key b = f(y))
  H, W, D  image height, width, depth (channels)
  F  convolution filters

A leading `...` means any number of batch dimensions.

Performance: importing kanerva_tf before TensorFlow turns on TensorFlow's oneDNN kernels
(`TF_ENABLE_ONEDNN_OPTS=1`) unless the variable is already set. TensorFlow enables them by
default only on some Intel CPUs; on other x86 CPUs (e.g. the AMD EPYC of our benchmarks) the
training step is ~2.4x faster with them (bench/profile_step.py, README "Performance"). The
variable is read when TensorFlow is first imported: set it yourself if you import TensorFlow
first, or to 0 to opt out.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position

from kanerva_tf.config import ModelConfig
from kanerva_tf.memory import KanervaMemory
from kanerva_tf.model import VAE
from kanerva_tf.model import KanervaMachine
from kanerva_tf.sdm import SparseDistributedMemory

__all__ = ["KanervaMemory", "KanervaMachine", "ModelConfig", "SparseDistributedMemory", "VAE"]
